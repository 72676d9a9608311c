#ifndef RADAR_COPENSSL_SHIM_H
#define RADAR_COPENSSL_SHIM_H
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
// Macros Swift cannot import.
static inline int radar_gcm_set_ivlen(void) { return EVP_CTRL_GCM_SET_IVLEN; }
static inline int radar_gcm_get_tag(void) { return EVP_CTRL_GCM_GET_TAG; }
// Initialises libcrypto without its exit-time cleanup (see OpenSSLLibrary.prepare).
static inline int radar_openssl_init_no_atexit(void) { return OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL); }
#endif
