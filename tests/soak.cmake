# Soak (issue 8, docs/reliability.md "Soak"): bitnet-soak runs mixed load
# (Infer and InferStream from many clients, LoadModel/UnloadModel of a second
# model, FineTune + SaveModel of the demo model) against a spawned
# bitnet-server, checks every answer against ReferenceForward and samples the
# server's RSS. CTest runs the short version (BITNET_SOAK_SECONDS, default
# 75); the 10-minute run is by hand:
#   build/tests/bitnet-soak --server=build/server/bitnet-server --duration=10m
# Label `soak`; RUN_SERIAL so its CPU load does not disturb the timing
# guards of server_load_test.
set(BITNET_SOAK_SECONDS 75 CACHE STRING "Seconds the CTest soak test runs")
if(TARGET bitnet_client AND TARGET bitnet-server AND TARGET bitnet_model)
  add_executable(bitnet-soak soak_main.cc)
  target_link_libraries(bitnet-soak PRIVATE bitnet_client bitnet_model
    absl::strings absl::str_format absl::synchronization absl::time)
  add_dependencies(bitnet-soak bitnet-server)
  add_test(NAME soak_short
    COMMAND bitnet-soak --server=$<TARGET_FILE:bitnet-server>
            --duration=${BITNET_SOAK_SECONDS}s --max_rss_growth_mb=64)
  set_tests_properties(soak_short PROPERTIES
    LABELS soak RUN_SERIAL TRUE TIMEOUT 600)
endif()
