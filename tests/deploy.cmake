# Deployment tests (issue 7): Dockerfile, compose, Kubernetes and Grafana
# structure (tests/deploy/check_deploy.py), Prometheus rules (promtool),
# YAML lint, and the end-to-end scrape by a real Prometheus
# (tests/deploy/prometheus_e2e.py). Label: deploy.
#
# Debian's python3 (/usr/bin) first: python3-yaml and python3-grpcio from
# setup.sh are installed for it, not for other interpreters on PATH.
find_program(BITNET_DEPLOY_PYTHON python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT BITNET_DEPLOY_PYTHON)
  find_program(BITNET_DEPLOY_PYTHON python3)
endif()
find_program(BITNET_PROMTOOL promtool)
find_program(BITNET_YAMLLINT yamllint)
find_program(BITNET_DOCKER_COMPOSE docker-compose)

set(_deploy_dir ${CMAKE_CURRENT_SOURCE_DIR}/deploy)
set(_deploy_check ${_deploy_dir}/check_deploy.py)
# A test that only reports why it cannot run (CTest shows it as skipped).
set(_deploy_skip ${BITNET_DEPLOY_PYTHON} -c "import sys; print(sys.argv[1]); sys.exit(77)")

if(NOT BITNET_DEPLOY_PYTHON)
  message(WARNING "deploy tests: python3 not found; not registered")
  return()
endif()

set(_deploy_binaries)
set(_deploy_server "")
set(_deploy_cli "")
if(TARGET bitnet-server)
  set(_deploy_server $<TARGET_FILE:bitnet-server>)
  list(APPEND _deploy_binaries --binary $<TARGET_FILE:bitnet-server>)
endif()
if(TARGET bitnet-cli)
  set(_deploy_cli $<TARGET_FILE:bitnet-cli>)
  list(APPEND _deploy_binaries --binary $<TARGET_FILE:bitnet-cli>)
endif()

add_test(NAME deploy_dockerfile
  COMMAND ${BITNET_DEPLOY_PYTHON} ${_deploy_check} dockerfile ${_deploy_binaries})

# `docker-compose config` validates against the compose schema without an
# engine; the docker CLI's compose plugin does too where it is installed.
set(_deploy_compose_cmd "")
if(BITNET_DOCKER_COMPOSE)
  set(_deploy_compose_cmd ${BITNET_DOCKER_COMPOSE})
else()
  find_program(BITNET_DOCKER docker)
  if(BITNET_DOCKER)
    execute_process(COMMAND ${BITNET_DOCKER} compose version
      RESULT_VARIABLE _deploy_compose_rc OUTPUT_QUIET ERROR_QUIET)
    if(_deploy_compose_rc EQUAL 0)
      set(_deploy_compose_cmd "${BITNET_DOCKER} compose")
    endif()
  endif()
endif()
add_test(NAME deploy_compose
  COMMAND ${BITNET_DEPLOY_PYTHON} ${_deploy_check} compose
          --compose-cmd "${_deploy_compose_cmd}")
add_test(NAME deploy_k8s
  COMMAND ${BITNET_DEPLOY_PYTHON} ${_deploy_check} k8s --server "${_deploy_server}")
add_test(NAME deploy_grafana
  COMMAND ${BITNET_DEPLOY_PYTHON} ${_deploy_check} grafana)

if(BITNET_PROMTOOL)
  add_test(NAME deploy_prometheus_rules_check
    COMMAND ${BITNET_PROMTOOL} check rules ${PROJECT_SOURCE_DIR}/deploy/rules.yml)
  add_test(NAME deploy_prometheus_rules_test
    COMMAND ${BITNET_PROMTOOL} test rules ${_deploy_dir}/rules_test.yml)
  add_test(NAME deploy_prometheus_config
    COMMAND ${BITNET_PROMTOOL} check config ${PROJECT_SOURCE_DIR}/deploy/prometheus.yml)
else()
  foreach(t rules_check rules_test config)
    add_test(NAME deploy_prometheus_${t}
      COMMAND ${_deploy_skip} "SKIP: promtool not installed (Debian package prometheus)")
  endforeach()
endif()

if(BITNET_YAMLLINT)
  add_test(NAME deploy_yamllint
    COMMAND ${BITNET_YAMLLINT} --strict -c ${PROJECT_SOURCE_DIR}/deploy/.yamllint.yaml
            ${PROJECT_SOURCE_DIR}/deploy ${_deploy_dir})
else()
  add_test(NAME deploy_yamllint
    COMMAND ${_deploy_skip} "SKIP: yamllint not installed (Debian package yamllint)")
endif()

add_test(NAME deploy_prometheus_e2e
  COMMAND ${BITNET_DEPLOY_PYTHON} ${_deploy_dir}/prometheus_e2e.py
          --server "${_deploy_server}" --cli "${_deploy_cli}" --timeout 170)

set(_deploy_tests deploy_dockerfile deploy_compose deploy_k8s deploy_grafana
    deploy_prometheus_rules_check deploy_prometheus_rules_test
    deploy_prometheus_config deploy_yamllint deploy_prometheus_e2e)
set_tests_properties(${_deploy_tests} PROPERTIES
  LABELS deploy SKIP_RETURN_CODE 77 TIMEOUT 60)
set_tests_properties(deploy_prometheus_e2e PROPERTIES
  LABELS "deploy;e2e" TIMEOUT 200)
