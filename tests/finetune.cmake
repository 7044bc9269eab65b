# Admin.FineTune / Admin.SaveModel end to end (in-process server, real gRPC
# channel, CPU) including the digits acceptance test, and the crash-safe
# model writer. The GPU training backend's test (labelled gpu) skips without
# a device.
if(TARGET bitnet_server_lib AND TARGET bitnet_training)
  bitnet_add_test(finetune_test
    SOURCES finetune_test.cc
    LIBS bitnet_server_lib bitnet_training bitnet_model bitnet_kernels)
endif()

# GPU: the CUDA training backend against the CPU one, and a fine-tune with
# device "cuda" through the API. Both skip without a device.
if(TARGET bitnet_training)
  bitnet_add_test(training_cuda_test
    SOURCES training_cuda_test.cc
    LIBS bitnet_training bitnet_model bitnet_kernels
    LABELS gpu)
endif()
if(TARGET bitnet_server_lib AND TARGET bitnet_training)
  bitnet_add_test(finetune_gpu_test
    SOURCES finetune_gpu_test.cc
    LIBS bitnet_server_lib bitnet_training bitnet_model
    LABELS gpu)
endif()
