# STE training (server/training/): unit tests (gradients against finite
# differences, optimizers, trainer/inference equality) and the digits
# acceptance test (trains a ternary MLP on tests/fixtures/digits.safetensors).
if(TARGET bitnet_training)
  bitnet_add_test(training_test
    SOURCES training_test.cc
    LIBS bitnet_training bitnet_model bitnet_kernels)
  bitnet_add_test(training_digits_test
    SOURCES training_digits_test.cc
    LIBS bitnet_training bitnet_model bitnet_kernels)
endif()
