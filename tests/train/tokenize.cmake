# kdc tokenize writes the documented token-file bytes; a .bin input and a
# missing -o are refused. Run with -DKDC=<kdc binary> -DDIR=<scratch folder>.
file(MAKE_DIRECTORY ${DIR})
file(WRITE ${DIR}/hi.txt "Hi!\n")
execute_process(COMMAND ${KDC} tokenize ${DIR}/hi.txt -o ${DIR}/hi.bin
                RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out MATCHES "wrote 4 tokens \\(vocabulary 256\\)")
  message(FATAL_ERROR "kdc tokenize failed (${rc}): ${out}")
endif()
# "KDTK", version 1, vocab 256, reserved 0, count 4 (u64), then H i ! \n as u16.
file(READ ${DIR}/hi.bin got HEX)
set(want "4b44544b01000000000100000000000004000000000000004800690021000a00")
if(NOT got STREQUAL want)
  message(FATAL_ERROR "token file bytes\n got  ${got}\n want ${want}")
endif()
execute_process(COMMAND ${KDC} tokenize ${DIR}/hi.bin -o ${DIR}/again.bin RESULT_VARIABLE rc ERROR_VARIABLE e)
if(NOT rc EQUAL 1 OR NOT e MATCHES "already a token file")
  message(FATAL_ERROR "a .bin input: status ${rc}, '${e}'")
endif()
execute_process(COMMAND ${KDC} tokenize ${DIR}/hi.txt RESULT_VARIABLE rc ERROR_QUIET)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "no -o: status ${rc}, want 2")
endif()
