/* test_cnode.h - glue between the C node's CUnit runner (main in test_cnode.c) and its other
 * suites: each test_cnode_<topic>.c registers its suite through one function here. */
#ifndef SHOAL_TEST_CNODE_H
#define SHOAL_TEST_CNODE_H

#include <CUnit/CUnit.h>

/* Each returns CUE_SUCCESS or the CUnit error that stopped the registration. */
CU_ErrorCode test_cnode_register_ratelog(void);
CU_ErrorCode test_cnode_register_conn(void);

#endif
