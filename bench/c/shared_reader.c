/* The floor under "4 callers [BlockingNode threads]" if the call path were C: threads share one
 * TCP connection to an echo ({packet, 4}, 64-byte frames), and whichever caller waits reads for
 * all of them (leader/follower), routing each reply to its caller and waking it, all without the
 * GIL. The GIL is taken only to enter and leave a call. No distribution, no protocol work: what
 * is left is the wake-ups, as in the Python floor row beside it.
 *
 * bench/node_bench.py compiles this with the system's cc into a scratch folder; it is not part
 * of beambridge. A frame's bytes 4..7 hold the caller's slot number (0..SLOTS-1).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define SLOTS 64
#define FRAME 64

typedef struct {
    int waiting, done;
    pthread_cond_t cond;
} Slot;

typedef struct {
    PyObject_HEAD
    int fd, leader, broken;
    long spin_ns;
    pthread_mutex_t mu, send_mu;
    Slot slots[SLOTS];
    size_t have;
    unsigned char buf[1 << 16];
} Reader;

static int reader_init(Reader *self, PyObject *args, PyObject *kw) {
    double spin = 0.0;
    if (!PyArg_ParseTuple(args, "i|d", &self->fd, &spin)) return -1;
    self->spin_ns = (long)(spin * 1e9);
    self->leader = self->broken = 0;
    self->have = 0;
    pthread_mutex_init(&self->mu, NULL);
    pthread_mutex_init(&self->send_mu, NULL);
    for (int i = 0; i < SLOTS; i++) {
        self->slots[i].waiting = self->slots[i].done = 0;
        pthread_cond_init(&self->slots[i].cond, NULL);
    }
    return 0;
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* Read once (polling up to spin_ns before blocking, as the Python owner does); mutex not held. */
static ssize_t read_some(Reader *self) {
    unsigned char *at = self->buf + self->have;
    size_t room = sizeof self->buf - self->have;
    long until = self->spin_ns > 0 ? now_ns() + self->spin_ns : 0;
    for (;;) {
        ssize_t n = recv(self->fd, at, room, until ? MSG_DONTWAIT : 0);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (now_ns() >= until) until = 0;  /* polled long enough: block */
    }
}

/* Leader: read and route until our own reply came; mutex held on entry and exit. */
static void lead(Reader *self, Slot *me) {
    self->leader = 1;
    while (!me->done && !self->broken) {
        pthread_mutex_unlock(&self->mu);
        ssize_t n = read_some(self);
        pthread_mutex_lock(&self->mu);
        if (n <= 0) {
            self->broken = 1;
            break;
        }
        self->have += (size_t)n;
        size_t off = 0;
        for (; self->have - off >= FRAME; off += FRAME) {
            uint32_t slot;
            memcpy(&slot, self->buf + off + 4, 4);
            if (slot >= SLOTS || !self->slots[slot].waiting) {
                self->broken = 1;  /* not a reply anyone waits for: the run is wrong */
                break;
            }
            self->slots[slot].done = 1;
            if (&self->slots[slot] != me) pthread_cond_signal(&self->slots[slot].cond);
        }
        memmove(self->buf, self->buf + off, self->have - off);
        self->have -= off;
    }
    self->leader = 0;
    /* hand reading to a caller still waiting; with none, the next caller in leads */
    for (int i = 0; i < SLOTS; i++) {
        Slot *other = &self->slots[i];
        if (other != me && (self->broken || (other->waiting && !other->done))) {
            pthread_cond_signal(&other->cond);
            if (!self->broken) break;
        }
    }
}

static PyObject *reader_call(Reader *self, PyObject *args) {
    unsigned int slot;
    Py_buffer frame;
    if (!PyArg_ParseTuple(args, "Iy*", &slot, &frame)) return NULL;
    if (slot >= SLOTS || frame.len != FRAME) {
        PyBuffer_Release(&frame);
        PyErr_SetString(PyExc_ValueError, "slot out of range or frame not 64 bytes");
        return NULL;
    }
    Slot *me = &self->slots[slot];
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    me->waiting = 1;
    me->done = 0;
    pthread_mutex_unlock(&self->mu);
    pthread_mutex_lock(&self->send_mu);
    failed = send(self->fd, frame.buf, FRAME, 0) != FRAME;
    pthread_mutex_unlock(&self->send_mu);
    pthread_mutex_lock(&self->mu);
    while (!failed && !me->done && !self->broken) {
        if (!self->leader)
            lead(self, me);
        else
            pthread_cond_wait(&me->cond, &self->mu);
    }
    failed = failed || !me->done;
    me->waiting = 0;
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&frame);
    if (failed) {
        PyErr_SetString(PyExc_OSError, "the echo connection failed or sent a stray reply");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef reader_methods[] = {
    {"call", (PyCFunction)reader_call, METH_VARARGS, "call(slot, frame): send, wait for the echo"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shared_reader.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_methods = reader_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shared_reader", NULL, -1, NULL};

PyMODINIT_FUNC PyInit_shared_reader(void) {
    if (PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
