# CUDA kernels and the CUDA backend (label gpu). Built whenever the CUDA
# toolkit is found; every GPU test skips itself when no device is visible, so
# CI without a GPU passes.
if(TARGET bitnet_kernels_cuda)
  bitnet_add_test(cuda_kernels_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_kernels_test.cc
    LIBS bitnet_kernels_cuda bitnet_kernels
    LABELS gpu)
  if(TARGET bitnet_runtime AND EXISTS ${PROJECT_SOURCE_DIR}/server/runtime/cuda_backend.cc
     AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/cuda_backend_test.cc)
    bitnet_add_test(cuda_backend_test
      SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_backend_test.cc
      LIBS bitnet_runtime bitnet_model bitnet_kernels_cuda
      LABELS gpu)
  endif()
endif()
