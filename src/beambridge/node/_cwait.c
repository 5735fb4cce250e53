/* The node's short waits for bytes, without the GIL (beambridge.node._wait picks this or its
 * pure-Python twin).
 *
 * A node that has just written a request or an answer polls its socket for a few tens of
 * microseconds before it sleeps, as BEAM's schedulers spin before they sleep: the next packet
 * usually comes that soon, and a sleep costs a wake-up. Spun in Python, every try holds the GIL,
 * raises and catches BlockingIOError and reads the clock, so the threads that the reply wakes,
 * and the node's other threads, wait for the spinner. Here the whole spin is one call that
 * gives the GIL up until data came or the time is up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

/* interned once: the call below runs on every read of a waiting caller */
static PyObject *gettimeout_name;

static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* recv_within(sock, seconds, size): what the socket has within ``seconds`` (at most 1; one try
 * when 0 or less), at most ``size`` bytes (1..16 MiB); b"" at the end of the stream, None when
 * nothing came; OSError for a failed read (a closed socket's among them), ValueError for bad
 * arguments or a socket with a timeout. Blocking or not, every try is MSG_DONTWAIT. */
static PyObject *recv_within(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "recv_within(sock, seconds, size) takes 3 arguments");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);  /* a socket's fileno() */
    if (fd == -1) {
        if (PyErr_Occurred()) {
            /* a closed socket says -1 as its fileno(), which this call refuses: say what recv()
             * would say of it, as the pure twin does */
            if (!PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
            PyErr_Clear();
        }
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    double seconds = PyFloat_AsDouble(args[1]);
    if (seconds == -1.0 && PyErr_Occurred()) return NULL;
    if (!(seconds <= 1.0)) {  /* NaN too: a spin no signal can stop must be short */
        PyErr_SetString(PyExc_ValueError, "recv_within: seconds must be at most 1");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[2]);
    if (size == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear();
    }
    if (size <= 0 || size > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "recv_within: size must be 1..16 MiB");
        return NULL;
    }
    /* a socket with a timeout would make the pure twin wait in CPython's own poll first */
    PyObject *timeout = PyObject_CallMethodNoArgs(args[0], gettimeout_name);
    if (timeout == NULL) return NULL;
    int timed = timeout != Py_None && PyFloat_Check(timeout) && PyFloat_AS_DOUBLE(timeout) > 0.0;
    Py_DECREF(timeout);
    if (timed) {
        PyErr_SetString(PyExc_ValueError, "recv_within: the socket must have no timeout "
                                          "(non-blocking, or blocking without one)");
        return NULL;
    }
    /* the buffer first: no allocation while the GIL is given up, and none sized by the peer */
    PyObject *buf = PyBytes_FromStringAndSize(NULL, size);
    if (buf == NULL) return NULL;
    char *at = PyBytes_AS_STRING(buf);
    ssize_t got;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    double until = -1.0;  /* the clock is read only once the first try found nothing */
    for (;;) {
        got = recv(fd, at, (size_t)size, MSG_DONTWAIT);
        if (got >= 0) break;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            error = errno;
            break;
        }
        if (seconds <= 0) break;
        double now = monotonic();
        if (until < 0) until = now + seconds;
        else if (now >= until) break;
    }
    Py_END_ALLOW_THREADS
    if (error) {
        Py_DECREF(buf);
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (got < 0) {
        Py_DECREF(buf);
        Py_RETURN_NONE;
    }
    if (_PyBytes_Resize(&buf, got) < 0) return NULL;
    return buf;
}

static PyMethodDef methods[] = {
    {"recv_within", (PyCFunction)(void (*)(void))recv_within, METH_FASTCALL,
     "recv_within(sock, seconds, size): the bytes the socket has within seconds, b'' at its end, "
     "None when nothing came (the GIL given up meanwhile)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "beambridge.node._cwait",
    "The node's short waits for bytes, without the GIL.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cwait(void) {
    if (gettimeout_name == NULL) {
        gettimeout_name = PyUnicode_InternFromString("gettimeout");
        if (gettimeout_name == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
