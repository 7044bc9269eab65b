# Bounded libFuzzer runs (docs/reliability.md): fuzz_build builds the fuzz
# targets with clang in a nested build tree (scripts/fuzz.sh build), then
# each fuzz_<target> test fuzzes for BITNET_FUZZ_SECONDS from the committed
# seeds (fuzz/corpus/<target>, which includes the reproducers of past
# findings). A crash, sanitizer report, leak, timeout or broken invariant
# fails the test; the input is left in nested-fuzz/fuzz-artifacts/<target>/.
# Label `fuzz`; RUN_SERIAL so fuzzing does not starve timing-sensitive tests.
set(BITNET_FUZZ_SECONDS 20 CACHE STRING "Seconds each fuzz target runs under ctest")
if(NOT BITNET_NESTED_BUILD)
  set(_fuzz_dir ${CMAKE_BINARY_DIR}/nested-fuzz)
  add_test(NAME fuzz_build COMMAND ${PROJECT_SOURCE_DIR}/scripts/fuzz.sh build ${_fuzz_dir})
  set_tests_properties(fuzz_build PROPERTIES
    LABELS fuzz RUN_SERIAL TRUE TIMEOUT 1800 FIXTURES_SETUP bitnet_fuzz_build)
  foreach(target fuzz_safetensors fuzz_model_file fuzz_quantize fuzz_pack_converter
                 fuzz_infer_request)
    add_test(NAME ${target}
             COMMAND ${PROJECT_SOURCE_DIR}/scripts/fuzz.sh run ${_fuzz_dir} ${target}
                     ${BITNET_FUZZ_SECONDS})
    set_tests_properties(${target} PROPERTIES
      LABELS fuzz RUN_SERIAL TRUE TIMEOUT 600 FIXTURES_REQUIRED bitnet_fuzz_build)
  endforeach()
endif()
