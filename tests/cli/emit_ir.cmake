# Runs `kdc emit-ir SPEC --after STAGE [ARGS]` and compares its stdout with
# EXPECTED, and its exit status with 0. Run as
#   cmake -DKDC=... -DSPEC=... -DSTAGE=... -DEXPECTED=... [-DARGS=...] -P emit_ir.cmake
# With PATTERN, the output must also match that regular expression.
# Without EXPECTED it checks that the stage runs and prints a graph with a
# loss output, and a grad output from autodiff on.
execute_process(COMMAND ${KDC} emit-ir ${SPEC} --after ${STAGE} ${ARGS}
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "kdc emit-ir ${SPEC} --after ${STAGE}: exit ${rc}\n${err}")
endif()
if(DEFINED PATTERN AND NOT out MATCHES "${PATTERN}")
  message(FATAL_ERROR "kdc emit-ir ${SPEC} --after ${STAGE}: no match for '${PATTERN}' in\n${out}")
endif()
if(DEFINED EXPECTED)
  file(READ ${EXPECTED} want)
  if(NOT out STREQUAL want)
    message(FATAL_ERROR "kdc emit-ir ${SPEC} --after ${STAGE} printed\n${out}\nexpected "
            "(${EXPECTED})\n${want}")
  endif()
elseif(NOT out MATCHES "output loss = %[0-9]+" AND NOT STAGE STREQUAL "fuse")
  message(FATAL_ERROR "kdc emit-ir ${SPEC} --after ${STAGE}: no loss output in\n${out}")
elseif(NOT STAGE MATCHES "^(lower|canonicalize)$" AND NOT out MATCHES "output grad = %[0-9]+")
  message(FATAL_ERROR "kdc emit-ir ${SPEC} --after ${STAGE}: no grad output in\n${out}")
endif()
