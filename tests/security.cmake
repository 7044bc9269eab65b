# Security tests (issue 8, docs/reliability.md "Security checklist"): TLS and
# mTLS for both services with openssl-made certificates, the constant-time
# token comparison, model-path confinement over RPC, size limits from flags,
# and no secrets in the server's logs. Runs the real bitnet-server binary.
if(TARGET bitnet_server_lib AND TARGET bitnet_client AND TARGET bitnet-server)
  bitnet_add_test(security_test
    SOURCES security_test.cc
    LIBS bitnet_server_lib bitnet_client bitnet_model)
  add_dependencies(security_test bitnet-server)
  target_compile_definitions(security_test PRIVATE
    BITNET_SERVER_BINARY="$<TARGET_FILE:bitnet-server>")
endif()
