/* The libcurl floor of a batch: N POSTs of one body on C kept-alive easy handles of one multi
 * handle, the body sent through a read callback that cannot rewind (as kaifang sends it), every
 * reply's status and body checked. What kaifang.batch costs above this is kaifang's own.
 * Its CPU time is taken around the transfers (getrusage), as the in-process cases take theirs
 * around the batch: the process's start (exec, libcurl's and OpenSSL's initialisation, about
 * 5 ms, 0.25 us per call of a 20,000-call run) is not the floor's to pay.
 * Usage: curl_floor URL BODYFILE CONCURRENCY N EXPECT_PREFIX
 *   -> prints "ok <n> failed <n> cpu <seconds, user + sys> faults <minor page faults>" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/resource.h>

#include <curl/curl.h>

typedef struct slot {
  CURL *easy;
  size_t sent;
  char reply[4096];
  size_t got;
} slot;

static const char *body;
static size_t body_len;

static size_t on_read(char *ptr, size_t size, size_t nmemb, void *ud) {
  slot *s = ud;
  size_t n = body_len - s->sent;
  if (n > size * nmemb) n = size * nmemb;
  memcpy(ptr, body + s->sent, n);
  s->sent += n;
  return n;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud) {
  slot *s = ud;
  size_t n = size * nmemb;
  if (s->got + n > sizeof s->reply) return 0;
  memcpy(s->reply + s->got, ptr, n);
  s->got += n;
  return n;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static long minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

static void start(CURLM *multi, slot *s) {
  s->sent = s->got = 0;
  curl_multi_add_handle(multi, s->easy);
}

int main(int argc, char **argv) {
  const char *url, *expect;
  struct curl_slist *headers = NULL;
  long concurrency, total, started = 0, ok = 0, failed = 0;
  slot *slots;
  CURLM *multi;
  FILE *f;
  long i;
  double cpu0;
  long faults0;
  if (argc != 6) {
    fprintf(stderr, "usage: %s URL BODYFILE CONCURRENCY N EXPECT_PREFIX\n", argv[0]);
    return 2;
  }
  url = argv[1];
  concurrency = atol(argv[3]);
  total = atol(argv[4]);
  expect = argv[5];
  f = fopen(argv[2], "rb");
  if (f == NULL || concurrency < 1 || total < 1) {
    fprintf(stderr, "curl_floor: bad arguments\n");
    return 2;
  }
  {
    static char buf[1 << 16];
    body_len = fread(buf, 1, sizeof buf, f);
    body = buf;
    fclose(f);
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, concurrency);
  headers = curl_slist_append(headers, "Content-Type: application/x-www-form-urlencoded");
  headers = curl_slist_append(headers, "Expect:");
  slots = calloc((size_t)concurrency, sizeof *slots);
  for (i = 0; i < concurrency; i++) {
    CURL *e = slots[i].easy = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)&slots[i]);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    /* as kaifang: no proxy, so libcurl does not read the environment's proxy variables per transfer */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "kaifang/0.1"); /* kaifang's request bytes */
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, &slots[i]);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &slots[i]);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L); /* kaifang's buffer sizes (csrc/http.c) */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 8192L);
  }
  cpu0 = cpu_seconds();
  faults0 = minor_faults();
  for (i = 0; i < concurrency && started < total; i++, started++) start(multi, &slots[i]);
  while (ok + failed < total) {
    int running = 0, queued, finished = 0;
    CURLMsg *msg;
    curl_multi_perform(multi, &running);
    while ((msg = curl_multi_info_read(multi, &queued)) != NULL) {
      slot *s = NULL;
      long status = 0;
      if (msg->msg != CURLMSG_DONE) continue;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
      if (msg->data.result == CURLE_OK && status == 200 && s->got >= strlen(expect) &&
          memcmp(s->reply, expect, strlen(expect)) == 0)
        ok++;
      else
        failed++;
      curl_multi_remove_handle(multi, msg->easy_handle);
      finished++;
      if (started < total) {
        start(multi, s);
        started++;
      }
    }
    /* wait only when nothing finished: the transfers just restarted are sent at once instead */
    if (!finished && ok + failed < total) curl_multi_poll(multi, NULL, 0, 1000, NULL);
  }
  printf("ok %ld failed %ld cpu %.6f faults %ld\n", ok, failed, cpu_seconds() - cpu0, minor_faults() - faults0);
  for (i = 0; i < concurrency; i++) curl_easy_cleanup(slots[i].easy);
  curl_multi_cleanup(multi);
  curl_slist_free_all(headers);
  free(slots);
  curl_global_cleanup();
  return failed ? 1 : 0;
}
