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
