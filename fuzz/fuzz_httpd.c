/* The sandbox's HTTP server in this process: each input is sent as is on a fresh loopback
 * connection, which then half-closes; every request that reaches Lua is checked and answered,
 * and the reply read to the end. libmicrohttpd parses, kaifang's httpd.c collects, caps and
 * answers: under ASan and UBSan, any memory or arithmetic error there stops the run. */
#define FUZZ_WITH_LUA
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY 4096

int luaopen_kaifang_sandbox_httpd(lua_State *L);

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The server, as the global `srv`; returns its port. */
static int server(lua_State **out) {
  static lua_State *L;
  static int port;
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "httpd", luaopen_kaifang_sandbox_httpd, 1);
    if (luaL_dostring(L, "srv = assert(httpd.listen{ host = '127.0.0.1', port = 0, max_body = 4096, "
                         "max_memory = 65536, header_timeout = 1, connection_timeout = 2 }) return srv:port()") != 0)
      FUZZ_CHECK(0, "listen: %s", lua_tostring(L, -1));
    port = (int)lua_tointeger(L, -1);
  }
  lua_settop(L, 0);
  *out = L;
  return port;
}

/* Takes one request if there is one, checks it and answers it. Returns 1 when it answered. */
static int serve_one(lua_State *L) {
  static const char chunk[] =
      "local r = srv:next(0.0003) if not r then return false end "
      "assert(#r.body <= 4096, 'a body past max_body reached Lua') "
      "assert(r.method ~= '' and r.uri ~= nil and type(r.headers) == 'table') "
      "for k, v in pairs(r.headers) do assert(k == k:lower(), 'header name not lower-cased') end "
      "assert(srv:respond(r.id, 200, { ['X-Method'] = 'm' .. r.method:gsub('[^%w]', '') }, r.path .. '\\n' .. r.body)) "
      "return true";
  int answered;
  FUZZ_CHECK(luaL_dostring(L, chunk) == 0, "%s", lua_tostring(L, -1));
  answered = lua_toboolean(L, -1);
  lua_settop(L, 0);
  return answered;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L;
  int port = server(&L), fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa;
  size_t sent = 0;
  double deadline;
  char buf[65536];
  FUZZ_CHECK(fd >= 0, "socket: %s", strerror(errno));
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    /* libFuzzer's timer (SIGALRM) can interrupt it; the connection goes on, so wait for it */
    struct pollfd p;
    int e = 0;
    socklen_t elen = sizeof e;
    FUZZ_CHECK(errno == EINTR, "connect: %s", strerror(errno));
    p.fd = fd;
    p.events = POLLOUT;
    p.revents = 0;
    while (poll(&p, 1, 3000) < 0 && errno == EINTR) {
    }
    FUZZ_CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) == 0 && e == 0, "connect: %s", strerror(e));
  }
  deadline = now() + 3;
  while (sent < size && now() < deadline) { /* the server may answer (and close) before it all went */
    ssize_t w = send(fd, data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) sent += (size_t)w;
    else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) serve_one(L);
    else break;
  }
  shutdown(fd, SHUT_WR);
  for (;;) { /* until the server closes: it answers, refuses or times the connection out */
    struct pollfd p;
    ssize_t n;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    serve_one(L);
    if (poll(&p, 1, 0) == 1) {
      n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
    }
    FUZZ_CHECK(now() < deadline, "the server kept a half-closed connection open for 3 s");
  }
  {
    struct linger lg = {1, 0}; /* a reset, not TIME_WAIT: thousands of connections a minute would use up the ports */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  close(fd);
  return 0;
}
