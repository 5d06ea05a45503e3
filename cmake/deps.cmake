# All third-party dependencies come from Debian packages (scripts/setup.sh) and are gathered
# into one interface target. Heavy headers (json, CLI11, yaml, pcre2) are included by one .cpp
# each; linking them here costs nothing at compile time.
find_package(PkgConfig REQUIRED)
find_package(OpenMP REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(CLI11 REQUIRED)
find_package(yaml-cpp REQUIRED)
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)   # OpenMP variant (setup.sh)
pkg_check_modules(LAPACKE REQUIRED IMPORTED_TARGET lapacke)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
pkg_check_modules(SENTENCEPIECE IMPORTED_TARGET sentencepiece)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)   # peft serve; only src/serve/http.cpp (and its test) include it

add_library(peft_deps INTERFACE)
target_link_libraries(peft_deps INTERFACE
  OpenMP::OpenMP_CXX fmt::fmt nlohmann_json::nlohmann_json CLI11::CLI11 yaml-cpp
  PkgConfig::OPENBLAS PkgConfig::LAPACKE PkgConfig::PCRE2 PkgConfig::UTF8PROC PkgConfig::HTTPLIB)
if(SENTENCEPIECE_FOUND)
  target_link_libraries(peft_deps INTERFACE PkgConfig::SENTENCEPIECE)
  target_compile_definitions(peft_deps INTERFACE PEFT_HAVE_SENTENCEPIECE=1)
endif()
