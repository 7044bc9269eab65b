# Multi-device serving (issue 9): --device lists, least-loaded routing,
# version publication to every instance, device failure; fake backends on
# the CPU. The end-to-end server test with --device=cpu,cpu is
# multi_device_server_test.
if(TARGET bitnet_registry AND TARGET bitnet_runtime)
  bitnet_add_test(multi_device_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/multi_device_test.cc
    LIBS bitnet_registry bitnet_runtime bitnet_model)
endif()
if(TARGET bitnet_server_lib AND TARGET bitnet_client)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(BITNET_MD_HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
  bitnet_add_test(multi_device_server_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/multi_device_server_test.cc
    LIBS bitnet_server_lib bitnet_client bitnet_model PkgConfig::BITNET_MD_HTTPLIB)
endif()
# Two or more GPUs: --device=all end to end (skips with fewer).
if(TARGET bitnet_server_lib AND TARGET bitnet_client)
  bitnet_add_test(multi_device_gpu_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/multi_device_gpu_test.cc
    LIBS bitnet_server_lib bitnet_client bitnet_model PkgConfig::BITNET_MD_HTTPLIB
    LABELS gpu)
endif()
