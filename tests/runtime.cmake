# Runtime: backend selection, CPU backend vs ReferenceForward, and the CPU
# backend under the dynamic batcher from many threads.
if(TARGET bitnet_runtime AND TARGET bitnet_batching)
  bitnet_add_test(runtime_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/runtime_test.cc
    LIBS bitnet_runtime bitnet_model bitnet_batching)
endif()
