# Third-party libraries, all from Debian packages (see scripts/setup.sh).
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
find_package(hwy REQUIRED)

add_library(pdvm_deps INTERFACE)
target_link_libraries(pdvm_deps INTERFACE Threads::Threads fmt::fmt CLI11::CLI11
                      nlohmann_json::nlohmann_json PkgConfig::PCRE2 hwy::hwy)

# cpp-httplib for `pdvm serve` (Debian: libcpp-httplib-dev, a compiled library). Its pkg-config
# file carries the TLS/compression defines it was built with, which change its class layouts.
# AUTO builds `serve` when the library is found.
set(PDVM_SERVE AUTO CACHE STRING "Build the `pdvm serve` HTTP server (needs cpp-httplib): AUTO, ON or OFF")
set_property(CACHE PDVM_SERVE PROPERTY STRINGS AUTO ON OFF)
set(PDVM_HAVE_SERVE OFF)
if(NOT PDVM_SERVE STREQUAL "OFF")
  if(PDVM_SERVE STREQUAL "ON")
    pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
  else()
    pkg_check_modules(HTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
  endif()
  if(HTTPLIB_FOUND)
    set(PDVM_HAVE_SERVE ON)
  else()
    message(STATUS "cpp-httplib not found: `pdvm serve` is not built (apt install libcpp-httplib-dev)")
  endif()
endif()
