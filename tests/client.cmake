# Client library, bitnet-cli, bitnet-load and the installed CMake package.
#   client_test        bitnet::Client (and bitnet-load's stream sender)
#                      against scripted in-process servers
#   client_tools_test  chart/PNG, data files, histogram, sweeps, flags
#   cli_test           bitnet-cli and bitnet-load against a spawned
#                      bitnet-server (small demo model, loopback only)
#   client_consumer    cmake --install + find_package(bitnet) in tests/consumer
if(TARGET bitnet_client)
  find_package(gRPC CONFIG REQUIRED)
  bitnet_add_test(client_test
    SOURCES client_test.cc
    LIBS bitnet_client bitnet_client_tools gRPC::grpc++ absl::synchronization)
endif()

if(TARGET bitnet_client_tools)
  find_package(ZLIB REQUIRED)
  bitnet_add_test(client_tools_test
    SOURCES client_tools_test.cc
    LIBS bitnet_client_tools ZLIB::ZLIB absl::flags)
endif()

if(TARGET bitnet-cli AND TARGET bitnet-load AND TARGET bitnet-server)
  find_program(BITNET_CLI_TEST_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
  if(NOT BITNET_CLI_TEST_PYTHON3)
    find_program(BITNET_CLI_TEST_PYTHON3 python3)
  endif()
  if(BITNET_CLI_TEST_PYTHON3)
    add_test(NAME cli_test
      COMMAND ${BITNET_CLI_TEST_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/cli_test.py)
    set_tests_properties(cli_test PROPERTIES
      ENVIRONMENT "BITNET_SERVER=$<TARGET_FILE:bitnet-server>;BITNET_CLI=$<TARGET_FILE:bitnet-cli>;BITNET_LOAD=$<TARGET_FILE:bitnet-load>;BITNET_TEST_DATA_DIR=${CMAKE_CURRENT_SOURCE_DIR}/fixtures"
      SKIP_RETURN_CODE 77
      TIMEOUT 600)
  endif()
endif()

if(TARGET bitnet_client AND TARGET bitnet-server)
  # Installs the client component into a temporary prefix, then configures,
  # builds and runs tests/consumer against it (and a spawned server).
  add_test(NAME client_consumer
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/consumer/run_test.sh
      ${CMAKE_BINARY_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/consumer
      $<TARGET_FILE:bitnet-server> ${CMAKE_COMMAND} ${CMAKE_GENERATOR})
  set_tests_properties(client_consumer PROPERTIES TIMEOUT 900)
endif()
