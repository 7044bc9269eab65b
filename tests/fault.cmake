# Fault tests (issue 8, docs/reliability.md "Faults tried"): SIGTERM under
# load, SIGKILL during SaveModel, corrupt model files, queue overflow,
# cancel/deadline storms, a 100 MB message, non-finite inputs, unknown
# models. The signal tests run the real bitnet-server binary
# (tests/fault_server_process.h), so it is built with the test.
if(TARGET bitnet_server_lib AND TARGET bitnet_client AND TARGET bitnet-server)
  bitnet_add_test(fault_test
    SOURCES fault_test.cc
    LIBS bitnet_server_lib bitnet_client bitnet_model)
  add_dependencies(fault_test bitnet-server)
  target_compile_definitions(fault_test PRIVATE
    BITNET_SERVER_BINARY="$<TARGET_FILE:bitnet-server>")
endif()
