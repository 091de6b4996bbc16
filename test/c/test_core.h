/* test_core.h - glue between the CUnit runner (test_core_main.c) and the suites of the core
 * C library: each test_core_<module>.c registers its suites through one function here, and
 * reads shared inputs through accessors instead of globals it would have to declare itself. */
#ifndef SHOAL_TEST_CORE_H
#define SHOAL_TEST_CORE_H

#include <CUnit/CUnit.h>
#include <stdio.h>

/* Path of test/vectors/keyhash.txt, from argv[1] (NULL when none was given). */
const char *test_core_vectors_path(void);

/* Each returns CUE_SUCCESS or the CUnit error that stopped the registration. */
CU_ErrorCode test_core_register_keyhash(void);
CU_ErrorCode test_core_register_ratemeter(void);
CU_ErrorCode test_core_register_table(void);
CU_ErrorCode test_core_register_registry(void);

/* An assertion whose failure message carries formatted context (which vector, which key):
 * CUnit's own macros only print the expression. */
#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        char check_msg_[512];                                                                      \
        int check_ok_ = (cond) ? 1 : 0;                                                            \
        if (!check_ok_) snprintf(check_msg_, sizeof check_msg_, __VA_ARGS__);                      \
        CU_assertImplementation(check_ok_ ? CU_TRUE : CU_FALSE, __LINE__,                          \
                                check_ok_ ? #cond : check_msg_, __FILE__, "", CU_FALSE);           \
    } while (0)

#endif
