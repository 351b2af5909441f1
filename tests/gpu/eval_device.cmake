# kdc eval-loss --device cuda: without a CUDA driver, the message "no CUDA
# driver (libcuda.so.1 not found)" and exit status 1; with one, the loss the
# CPU kernel prints, to 1e-5 relative (the GPU sums rows in another order:
# f32 rounding, far below 1e-5 on these 4 x 8 logits).
set(args ${EXAMPLES}/fkl.kd --teacher ${EXAMPLES}/teacher.npy --student ${EXAMPLES}/student.npy)
execute_process(COMMAND ${KDC} eval-loss ${args} --device cuda RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(err MATCHES "no CUDA driver")
  if(NOT rc EQUAL 1 OR NOT err MATCHES "no CUDA driver \\(libcuda\\.so\\.1 not found\\)")
    message(FATAL_ERROR "no driver: expected exit 1 and the message, got ${rc}: ${err}")
  endif()
  message(STATUS "no CUDA driver here: the message and exit status 1 are right")
  return()
endif()
execute_process(COMMAND ${KDC} eval-loss ${args} RESULT_VARIABLE rc_cpu OUTPUT_VARIABLE out_cpu)
if(NOT rc EQUAL 0 OR NOT rc_cpu EQUAL 0)
  message(FATAL_ERROR "eval-loss failed: cuda ${rc}: ${err}; cpu ${rc_cpu}")
endif()
string(REGEX MATCH "loss: ([-+0-9.eE]+)" m "${out}")
set(gpu ${CMAKE_MATCH_1})
string(REGEX MATCH "loss: ([-+0-9.eE]+)" m "${out_cpu}")
set(cpu ${CMAKE_MATCH_1})
# cmake has no floating point: compare with the awk every Linux has
execute_process(COMMAND awk "BEGIN { d = ${gpu} - ${cpu}; if (d < 0) d = -d; exit !(d <= 1e-5 * (1 + (${cpu} < 0 ? -${cpu} : ${cpu}))) }"
                RESULT_VARIABLE close)
if(NOT close EQUAL 0)
  message(FATAL_ERROR "cuda loss ${gpu} != cpu loss ${cpu}")
endif()
