# Tests of server/model (bitnet_model) and tools/ (bitnet_pack_lib, bitnet-pack).
bitnet_add_test(model_safetensors_test SOURCES model_safetensors_test.cc LIBS bitnet_model)
bitnet_add_test(model_file_test SOURCES model_file_test.cc LIBS bitnet_model)
bitnet_add_test(model_demo_test SOURCES model_demo_test.cc LIBS bitnet_model)
bitnet_add_test(model_reference_forward_test SOURCES model_reference_forward_test.cc
                LIBS bitnet_model)

if(TARGET bitnet-pack)
  bitnet_add_test(pack_converter_test SOURCES pack_converter_test.cc
                  LIBS bitnet_pack_lib bitnet_model)
  # The end-to-end case runs the real binary; build it with the test.
  add_dependencies(pack_converter_test bitnet-pack)
  target_compile_definitions(pack_converter_test PRIVATE
    BITNET_PACK_BINARY="$<TARGET_FILE:bitnet-pack>")
endif()
