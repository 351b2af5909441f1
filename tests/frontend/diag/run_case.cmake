# Runs one golden diagnostic case and compares it with CASE.expected:
#   cmake -DKDC=path/to/kdc -DDIR=this/folder -DCASE=name -P run_case.cmake
# The command is `kdc check CASE.kd`, or the arguments in CASE.args when that
# file exists; it runs in DIR so that the paths printed are relative.
# CASE.expected holds "exit: N" on its first line, then the exact stderr.
# Expectations are only ever rewritten by hand or by regen.sh, never here.
if(EXISTS ${DIR}/${CASE}.args)
  file(READ ${DIR}/${CASE}.args args)
  string(STRIP "${args}" args)
  separate_arguments(args UNIX_COMMAND "${args}")
else()
  set(args check ${CASE}.kd)
endif()
execute_process(COMMAND ${KDC} ${args} WORKING_DIRECTORY ${DIR}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(actual "exit: ${rc}\n${err}")
if(NOT EXISTS ${DIR}/${CASE}.expected)
  message(FATAL_ERROR "${CASE}: no ${CASE}.expected; write it with regen.sh, then read it.\n"
                      "actual:\n${actual}")
endif()
file(READ ${DIR}/${CASE}.expected expected)
if(NOT actual STREQUAL expected)
  # NOTICE prints verbatim (FATAL_ERROR would re-wrap the caret lines).
  message(NOTICE "--- expected\n${expected}--- actual\n${actual}---")
  message(FATAL_ERROR "${CASE}: the diagnostics differ from ${CASE}.expected; if the change "
                      "is deliberate: tests/frontend/diag/regen.sh path/to/kdc ${CASE}")
endif()
