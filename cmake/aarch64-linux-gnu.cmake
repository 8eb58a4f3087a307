# Cross-compiles pdvm for 64-bit ARM Linux with Debian's g++-aarch64-linux-gnu. The compiler
# brings its own C/C++ runtime (/usr/aarch64-linux-gnu); our dependencies come from arm64 Debian
# packages unpacked into a separate folder (scripts/test-aarch64.sh builds it), so the host's
# amd64 packages are never touched. Binaries run under qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR),
# which is what ctest and gtest_discover_tests use.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(PDVM_ARM64_SYSROOT "$ENV{PDVM_ARM64_SYSROOT}")
if(NOT PDVM_ARM64_SYSROOT)
  set(PDVM_ARM64_SYSROOT /opt/arm64-sysroot)
endif()

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Look for libraries, headers and package configs only in the arm64 folder; programs on the host.
set(CMAKE_FIND_ROOT_PATH ${PDVM_ARM64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(ENV{PKG_CONFIG_LIBDIR}
    "${PDVM_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${PDVM_ARM64_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} ${PDVM_ARM64_SYSROOT})

# The unpacked shared libraries (fmt, hwy, pcre2) need each other's dependencies at link time.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,-rpath-link,${PDVM_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu")

# The folder is a complete arm64 root for the dynamic loader (libc6, libstdc++6 are unpacked too).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L ${PDVM_ARM64_SYSROOT})
