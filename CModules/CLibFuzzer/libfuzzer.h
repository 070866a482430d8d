// libFuzzer's driver, for the fuzz executables' own `main` (Fuzzing/, scripts/fuzz.sh). SwiftPM links every
// executable with `--defsym main=<module>_main`, so libFuzzer's `main` never runs: the Swift `main` of a fuzz
// target built with -sanitize=fuzzer calls this instead (libclang_rt.fuzzer provides it). Declared only.
#ifndef WSS_LIBFUZZER_H
#define WSS_LIBFUZZER_H
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));

#endif
