// The CA certificates where the machine keeps them, for the bundle (scripts/bundle.sh builds this
// as lib/libradar-ca-bundle.so and makes it the programs' first needed library).
//
// The bundle's libcurl (Debian's, under URLSession) reads the CA certificates only where Debian
// keeps them, /etc/ssl/certs/ca-certificates.crt, and swift-corelibs-foundation gives no way to
// name another file outside Android. RHEL, Rocky, Fedora, SUSE and Alpine keep them elsewhere, and
// there every HTTPS request of the bundle (the Hub: `radar prepare --source hf`, `--pretrained
// timm`, `hf-hub:`) failed: "error setting certificate file: /etc/ssl/certs/ca-certificates.crt".
// The bundle's libcurl (7.88, with OpenSSL 3) hands that path to libcrypto's X509_STORE_load_file;
// this library, earlier in the programs' lookup order than libcrypto, defines that function and
// passes on, in this order: CURL_CA_BUNDLE, REQUESTS_CA_BUNDLE or SSL_CERT_FILE when set to a file
// that can be read (curl's, Python requests' (what huggingface_hub users behind a TLS-inspecting
// proxy set) and OpenSSL's variables, which libcurl's compiled-in path otherwise overrides), the
// path asked for when it can be read, else the first of the other systems' bundles that can be
// read (else the path asked for, for libcurl's error).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct x509_store_st X509_STORE;

static const char *const other_bundles[] = {
    "/etc/pki/tls/certs/ca-bundle.crt",                   // RHEL, Rocky, Fedora, Amazon Linux
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  // the same, where only the newer path exists
    "/etc/ssl/ca-bundle.pem",                             // SUSE
    "/etc/ssl/cert.pem",                                  // Alpine, Arch
};

// The file to load in place of `asked`.
static const char *ca_file(const char *asked) {
    const char *vars[] = {"CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v && access(v, R_OK) == 0) return v;
    }
    if (asked == NULL || access(asked, R_OK) == 0) return asked;
    for (size_t i = 0; i < sizeof other_bundles / sizeof *other_bundles; i++)
        if (access(other_bundles[i], R_OK) == 0) return other_bundles[i];
    return asked;
}

typedef int (*load_file_fn)(X509_STORE *, const char *);

int X509_STORE_load_file(X509_STORE *store, const char *file) {
    static load_file_fn real;
    load_file_fn f = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
    if (f == NULL) {  // libcrypto's, after this library in the lookup order
        f = (load_file_fn)dlvsym(RTLD_NEXT, "X509_STORE_load_file", "OPENSSL_3.0.0");
        if (f == NULL) return 0;
        __atomic_store_n(&real, f, __ATOMIC_RELEASE);
    }
    return f(store, ca_file(file));
}
