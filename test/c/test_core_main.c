/* test_core_main.c - the CUnit runner for the core C library (keyhash, ratemeter, table, registry).
 *
 * `build/test_core test/vectors/keyhash.txt` runs every suite with the basic interface and
 * exits non-zero when any test failed, so make and CI notice. The failure count is read before
 * CU_cleanup_registry(), which clears the results (reading it afterwards always gives 0). */
#include <CUnit/Basic.h>
#include <stdio.h>

#include "test_core.h"

static const char *vectors_path;

const char *test_core_vectors_path(void)
{
    return vectors_path;
}

int main(int argc, char **argv)
{
    unsigned failed;
    CU_ErrorCode rc;

    if (argc != 2) {
        fprintf(stderr, "usage: %s test/vectors/keyhash.txt\n", argv[0]);
        return 2;
    }
    vectors_path = argv[1];
    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "test_core: %s\n", CU_get_error_msg());
        return 2;
    }
    if ((rc = test_core_register_keyhash()) != CUE_SUCCESS ||
        (rc = test_core_register_ratemeter()) != CUE_SUCCESS ||
        (rc = test_core_register_table()) != CUE_SUCCESS ||
        (rc = test_core_register_registry()) != CUE_SUCCESS) {
        fprintf(stderr, "test_core: registering suites: %s\n", CU_get_error_msg());
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    rc = CU_basic_run_tests();
    failed = CU_get_number_of_tests_failed() + CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    if (rc != CUE_SUCCESS) {
        fprintf(stderr, "test_core: run aborted (CUnit error %d)\n", (int)rc);
        return 2;
    }
    return failed ? 1 : 0;
}
