# Model registry: versions, swap under traffic, pinning, unload, drain.
if(TARGET bitnet_registry AND TARGET bitnet_runtime)
  bitnet_add_test(registry_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/registry_test.cc
    LIBS bitnet_registry bitnet_runtime bitnet_model)
endif()
