# Dynamic batcher: fake-clock unit tests plus a real-clock concurrency test.
if(TARGET bitnet_batching)
  bitnet_add_test(batching_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/batching_test.cc
    LIBS bitnet_batching)
endif()
