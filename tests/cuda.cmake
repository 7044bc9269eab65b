# CUDA kernels and the CUDA backend (label gpu). Built whenever the CUDA
# toolkit is found; every GPU test skips itself when no device is visible, so
# CI without a GPU passes.
if(TARGET bitnet_kernels_cuda)
  bitnet_add_test(cuda_kernels_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_kernels_test.cc
    LIBS bitnet_kernels_cuda bitnet_kernels
    LABELS gpu)
  # The int8 mode's fast quantization and division against the plain
  # formulas (a .cu of device checks behind a plain C++ interface).
  bitnet_add_test(cuda_int8_numerics_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_int8_numerics_test.cc
            ${CMAKE_CURRENT_LIST_DIR}/cuda_int8_numerics_check.cu
    LIBS bitnet_kernels_cuda
    LABELS gpu)
  if(TARGET bitnet_runtime AND EXISTS ${PROJECT_SOURCE_DIR}/server/runtime/cuda_backend.cc
     AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/cuda_backend_test.cc)
    bitnet_add_test(cuda_backend_test
      SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_backend_test.cc
      LIBS bitnet_runtime bitnet_model bitnet_kernels_cuda
      LABELS gpu)
  endif()
endif()
