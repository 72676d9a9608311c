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
#endif
