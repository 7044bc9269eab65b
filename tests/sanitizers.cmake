# Sanitizer builds of the CPU test suite (docs/reliability.md). Each test
# configures and builds a nested build tree under this one with
# scripts/sanitizers.sh and runs the kernels, model, pack converter,
# runtime, batching, registry and training tests in it; any ASan, LSan,
# UBSan or TSan report fails the test. Label `sanitizer`: skip them locally
# with `ctest -LE sanitizer`. RUN_SERIAL: each one builds with every core
# and must not slow down the timing-sensitive tests running beside it.
# BITNET_SANITIZER_SERVER_TESTS adds the gRPC server's unit and integration
# tests to the ASan run (about 5.5 more CPU-minutes of build, 3 s of tests).
option(BITNET_SANITIZER_SERVER_TESTS "Also run the gRPC server tests under ASan/UBSan" OFF)
if(NOT BITNET_NESTED_BUILD)
  foreach(mode asan tsan)
    add_test(NAME sanitizer_${mode}
             COMMAND ${PROJECT_SOURCE_DIR}/scripts/sanitizers.sh ${mode}
                     ${CMAKE_BINARY_DIR}/nested-${mode})
    set(_server 0)
    if(BITNET_SANITIZER_SERVER_TESTS)
      set(_server 1)
    endif()
    set_tests_properties(sanitizer_${mode} PROPERTIES
      LABELS sanitizer RUN_SERIAL TRUE TIMEOUT 2400
      ENVIRONMENT "BITNET_SANITIZER_SERVER=${_server}")
  endforeach()
endif()
