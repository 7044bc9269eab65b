# Tests of bitnet_kernels (kernels/, CPU part). Included by tests/CMakeLists.txt.
if(TARGET bitnet_kernels)
  find_package(nlohmann_json 3 REQUIRED)  # only to read the safetensors fixture header
  bitnet_add_test(kernels_ternary_format_test
    SOURCES kernels_ternary_format_test.cc
    LIBS bitnet_kernels nlohmann_json::nlohmann_json)
  bitnet_add_test(kernels_ternary_gemm_test
    SOURCES kernels_ternary_gemm_test.cc
    LIBS bitnet_kernels)
  bitnet_add_test(kernels_bit_linear_test
    SOURCES kernels_bit_linear_test.cc
    LIBS bitnet_kernels)
endif()
