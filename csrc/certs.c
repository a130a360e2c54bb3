#include "certs.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define VALID_DAYS 30

static char *bio_text(BIO *b) {
  char *data, *out;
  long n = BIO_get_mem_data(b, &data);
  if (n <= 0) return NULL;
  out = malloc((size_t)n + 1);
  if (out == NULL) return NULL;
  memcpy(out, data, (size_t)n);
  out[n] = '\0';
  return out;
}

static char *cert_pem(X509 *x) {
  BIO *b = BIO_new(BIO_s_mem());
  char *out = NULL;
  if (b && PEM_write_bio_X509(b, x)) out = bio_text(b);
  BIO_free(b);
  return out;
}

static char *key_pem(EVP_PKEY *k) {
  BIO *b = BIO_new(BIO_s_secmem()); /* its buffer holds the key: wiped when freed */
  char *out = NULL;
  if (b && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL)) out = bio_text(b);
  BIO_free(b);
  return out;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value) {
  X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
  int ok = e && X509_add_ext(x, e, -1);
  X509_EXTENSION_free(e);
  return ok;
}

/* A v3 certificate for key, named cn, signed by issuer's key (itself when issuer is NULL). */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key, const char *san) {
  X509 *x = X509_new();
  X509_NAME *name;
  BIGNUM *serial = BN_new();
  X509V3_CTX ctx;
  int ok = x && serial && X509_set_version(x, 2) && BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
           BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) && X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
           X509_gmtime_adj(X509_getm_notAfter(x), 86400L * VALID_DAYS) && X509_set_pubkey(x, key);
  BN_free(serial);
  if (ok) {
    name = X509_get_subject_name(x);
    ok = X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"kaifang sandbox", -1, -1, 0) &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) &&
         X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
  }
  if (ok) {
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    if (issuer == NULL) {
      ok = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
           add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") &&
           add_ext(x, &ctx, NID_subject_key_identifier, "hash");
    } else {
      ok = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") &&
           add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") &&
           add_ext(x, &ctx, NID_ext_key_usage, "serverAuth") && add_ext(x, &ctx, NID_subject_alt_name, san) &&
           add_ext(x, &ctx, NID_subject_key_identifier, "hash") &&
           add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always");
    }
  }
  if (ok) ok = X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0;
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

/* "DNS:a,IP:b,..." for the names; NULL when one is neither an IP address nor a plain host name. */
static char *san_of(const char *const *names, size_t n) {
  size_t i, len = 1;
  char *out, *p;
  for (i = 0; i < n; i++) len += strlen(names[i]) + 5;
  out = p = malloc(len);
  if (out == NULL) return NULL;
  *p = '\0';
  for (i = 0; i < n; i++) {
    unsigned char ip[16];
    const char *s = names[i];
    int is_ip = inet_pton(AF_INET, s, ip) == 1 || inet_pton(AF_INET6, s, ip) == 1;
    if (!is_ip && (*s == '\0' || strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != strlen(s))) {
      free(out);
      return NULL;
    }
    p += sprintf(p, "%s%s:%s", i ? "," : "", is_ip ? "IP" : "DNS", s);
  }
  return out;
}

int kf_certs_make(kf_certs *c, const char *const *names, size_t n, char *err, size_t errlen) {
  EVP_PKEY *ca_key = NULL, *key = NULL;
  X509 *ca = NULL, *cert = NULL;
  char *san = NULL;
  int ok;
  memset(c, 0, sizeof *c);
  if (n == 0 || (san = san_of(names, n)) == NULL) {
    snprintf(err, errlen, "a certificate needs host names or IP addresses (letters, digits, '.', '-')");
    return -1;
  }
  ca_key = EVP_EC_gen("P-256");
  key = EVP_EC_gen("P-256");
  ok = ca_key && key && (ca = make_cert(ca_key, "kaifang sandbox CA", NULL, NULL, NULL)) != NULL &&
       (cert = make_cert(key, names[0], ca, ca_key, san)) != NULL;
  if (ok) {
    c->ca_pem = cert_pem(ca);
    c->cert_pem = cert_pem(cert);
    c->key_pem = key_pem(key);
    ok = c->ca_pem && c->cert_pem && c->key_pem;
  }
  if (!ok) {
    const char *why = ERR_reason_error_string(ERR_get_error());
    snprintf(err, errlen, "cannot make the certificates: %s", why ? why : "out of memory");
    kf_certs_free(c);
  }
  ERR_clear_error();
  free(san);
  X509_free(ca);
  X509_free(cert);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(key);
  return ok ? 0 : -1;
}

void kf_certs_free(kf_certs *c) {
  if (c->key_pem) OPENSSL_cleanse(c->key_pem, strlen(c->key_pem));
  free(c->key_pem);
  free(c->cert_pem);
  free(c->ca_pem);
  memset(c, 0, sizeof *c);
}
