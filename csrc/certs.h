/* A private CA and one server certificate it signs, made in memory (OpenSSL, EC P-256), for the
 * sandbox's HTTPS. The CA's key is thrown away once it has signed: nothing else can be issued. */
#ifndef KAIFANG_CERTS_H
#define KAIFANG_CERTS_H

#include <stddef.h>

typedef struct kf_certs {
  char *ca_pem;   /* the CA certificate, what clients trust */
  char *cert_pem; /* the server's certificate */
  char *key_pem;  /* the server's private key (wiped on free) */
} kf_certs;

/* names: host names or IP addresses, the certificate's subjectAltName (the first is its CN).
 * 0, or -1 with a message in err. */
int kf_certs_make(kf_certs *c, const char *const *names, size_t n, char *err, size_t errlen);
void kf_certs_free(kf_certs *c);

#endif
