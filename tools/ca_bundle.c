// The CA certificates where the machine keeps them, for the bundle (scripts/bundle.sh builds this
// as lib/libradar-ca-bundle.so and makes it the programs' first needed library).
//
// The bundle's libcurl (Debian's, under URLSession) reads the CA certificates only where Debian
// keeps them, /etc/ssl/certs/ca-certificates.crt, and swift-corelibs-foundation gives no way to
// name another file outside Android. RHEL, Rocky, Fedora, SUSE and Alpine keep them elsewhere, and
// there every HTTPS request of the bundle (the Hub: `radar prepare --source hf`, `--pretrained
// timm`, `hf-hub:`) failed: "error setting certificate file: /etc/ssl/certs/ca-certificates.crt".
// libcurl 7.88 hands that path to libcrypto's X509_STORE_load_file (other versions to libssl's
// SSL_CTX_load_verify_file or _locations); this library, earlier in the programs' lookup order
// than libssl and libcrypto, defines those functions and passes on, in this order:
// CURL_CA_BUNDLE or SSL_CERT_FILE when set to a file that can be read (curl's and OpenSSL's own
// variables, which libcurl's compiled-in path otherwise overrides), the path asked for when it
// can be read, else the first of the other systems' bundles that can be read (else the path asked
// for, for libcurl's error).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct x509_store_st X509_STORE;

static const char *const other_bundles[] = {
    "/etc/pki/tls/certs/ca-bundle.crt",                   // RHEL, Rocky, Fedora, Amazon Linux
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  // the same, where only the newer path exists
    "/etc/ssl/ca-bundle.pem",                             // SUSE
    "/etc/ssl/cert.pem",                                  // Alpine, Arch
};

// The file to load in place of `asked` (exported for check-bundle's and the docs' sake).
const char *radar_ca_file(const char *asked) {
    const char *vars[] = {"CURL_CA_BUNDLE", "SSL_CERT_FILE"};
    for (size_t i = 0; i < 2; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v && access(v, R_OK) == 0) return v;
    }
    if (asked == NULL || access(asked, R_OK) == 0) return asked;
    for (size_t i = 0; i < sizeof other_bundles / sizeof *other_bundles; i++)
        if (access(other_bundles[i], R_OK) == 0) return other_bundles[i];
    return asked;
}

// libssl's or libcrypto's, after this library in the lookup order.
static void *next(void **slot, const char *name) {
    void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (f == NULL) {
        f = dlvsym(RTLD_NEXT, name, "OPENSSL_3.0.0");
        if (f != NULL) __atomic_store_n(slot, f, __ATOMIC_RELEASE);
    }
    return f;
}

// What libcurl 7.88 calls with OpenSSL 3 (`CURLOPT_CAINFO`, its compiled-in default here).
int X509_STORE_load_file(X509_STORE *store, const char *file) {
    static void *real;
    int (*f)(X509_STORE *, const char *) = (int (*)(X509_STORE *, const char *))next(&real, "X509_STORE_load_file");
    return f ? f(store, radar_ca_file(file)) : 0;
}

// The same through libssl, as other libcurl versions and libssl itself call it.
int SSL_CTX_load_verify_file(SSL_CTX *ctx, const char *file) {
    static void *real;
    int (*f)(SSL_CTX *, const char *) = (int (*)(SSL_CTX *, const char *))next(&real, "SSL_CTX_load_verify_file");
    return f ? f(ctx, radar_ca_file(file)) : 0;
}

// The older call, for a libcurl built for OpenSSL 1.1's API.
int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *file, const char *path) {
    static void *real;
    int (*f)(SSL_CTX *, const char *, const char *) =
        (int (*)(SSL_CTX *, const char *, const char *))next(&real, "SSL_CTX_load_verify_locations");
    return f ? f(ctx, file ? radar_ca_file(file) : NULL, path) : 0;
}
