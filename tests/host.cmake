# Host row buffers and element conversions: the F16C and scalar paths
# against server/model/half.h (the oracle), finiteness, in-place widening.
if(TARGET bitnet_host AND TARGET bitnet_model)
  bitnet_add_test(host_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/host_test.cc
    LIBS bitnet_host bitnet_model)
endif()
