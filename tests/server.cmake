# gRPC server: unit tests of the service helpers, in-process integration
# tests (ephemeral ports, real channels), the batching load test, and the
# Python client test.
if(TARGET bitnet_server_lib AND TARGET bitnet_client AND TARGET bitnet-server
   AND TARGET bitnet-cli)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(BITNET_TEST_HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)

  bitnet_add_test(server_service_test
    SOURCES server_service_test.cc
    LIBS bitnet_server_lib bitnet_model)
  bitnet_add_test(server_integration_test
    SOURCES server_integration_test.cc
    LIBS bitnet_server_lib bitnet_client bitnet_model PkgConfig::BITNET_TEST_HTTPLIB)
  bitnet_add_test(metrics_http_test
    SOURCES metrics_http_test.cc
    LIBS bitnet_server_lib PkgConfig::BITNET_TEST_HTTPLIB)
  bitnet_add_test(server_load_test
    SOURCES server_load_test.cc
    LIBS bitnet_server_lib bitnet_client bitnet_model)

  # The Python client test runs the real bitnet-server binary. It needs
  # python3 with grpcio and protobuf (Debian: python3-grpcio,
  # python3-protobuf; /usr/bin/python3 is preferred because a python3 from
  # pyenv or a venv usually lacks them). Exit code 77 = skipped.
  find_program(BITNET_SYSTEM_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
  if(NOT BITNET_SYSTEM_PYTHON3)
    find_program(BITNET_SYSTEM_PYTHON3 python3)
  endif()
  if(BITNET_SYSTEM_PYTHON3)
    add_test(NAME server_python_client
      COMMAND ${BITNET_SYSTEM_PYTHON3}
        ${CMAKE_CURRENT_SOURCE_DIR}/python/test_python_client.py)
    set_tests_properties(server_python_client PROPERTIES
      ENVIRONMENT "BITNET_SERVER=$<TARGET_FILE:bitnet-server>;BITNET_CLI=$<TARGET_FILE:bitnet-cli>;BITNET_PROTO_DIR=${PROJECT_SOURCE_DIR}/proto"
      SKIP_RETURN_CODE 77
      TIMEOUT 300)
  endif()
endif()
