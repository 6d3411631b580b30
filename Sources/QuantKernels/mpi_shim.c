/* mpi_shim.c — MPI by dlopen (mpi_shim.h). The prototypes are written per flavour, with each
 * handle of the kind that flavour's ABI gives it: pointers for Open MPI, ints for MPICH. */
#include "mpi_shim.h"
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NONE = 0, OPENMPI = 1, MPICH = 2 };
static int flavor = NONE;
static char library[256];
static int rank_ = 0, size_ = 1, initialized = 0;

/* Open MPI: handles are addresses. */
static void *o_comm_world, *o_float, *o_double, *o_byte, *o_op_sum;
static int (*o_init_thread)(int *, char ***, int, int *);
static int (*o_comm_rank)(void *, int *);
static int (*o_comm_size)(void *, int *);
static int (*o_allreduce)(const void *, void *, int, void *, void *, void *);
static int (*o_bcast)(void *, int, void *, int, void *);
static int (*o_allgather)(const void *, int, void *, void *, int, void *, void *);
static int (*o_iallreduce)(const void *, void *, int, void *, void *, void *, void **);
static int (*o_test)(void **, int *, void *);
static int (*o_wait)(void **, void *);
static int (*o_barrier)(void *);
static int (*o_abort)(void *, int);
static int (*o_finalize)(void);

/* MPICH's ABI constants (mpi.h of MPICH 3 and 4). */
enum { M_COMM_WORLD = 0x44000000, M_FLOAT = 0x4c00040a, M_DOUBLE = 0x4c00080b, M_BYTE = 0x4c00010d, M_SUM = 0x58000003 };
static int (*m_init_thread)(int *, char ***, int, int *);
static int (*m_comm_rank)(int, int *);
static int (*m_comm_size)(int, int *);
static int (*m_allreduce)(const void *, void *, int, int, int, int);
static int (*m_bcast)(void *, int, int, int, int);
static int (*m_allgather)(const void *, int, int, void *, int, int, int);
static int (*m_iallreduce)(const void *, void *, int, int, int, int, int *);
static int (*m_test)(int *, int *, void *);
static int (*m_wait)(int *, void *);
static int (*m_barrier)(int);
static int (*m_abort)(int, int);
static int (*m_finalize)(void);

static void *sym(void *h, const char *name, int *missing) {
    void *p = dlsym(h, name);
    if (!p) *missing = 1;
    return p;
}

/* MPI_IN_PLACE: ((void *)1) in Open MPI, ((void *)-1) in MPICH. MPI_THREAD_FUNNELED: 1 in both. */
#define O_IN_PLACE ((void *)1)
#define M_IN_PLACE ((void *)-1)
enum { THREAD_FUNNELED = 1 };

int qk_mpi_init(char *err, size_t errlen) {
    if (initialized) return 0;
    /* The launcher's own library first: Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE, MPICH's
     * Hydra (and Slurm's PMI) PMI_SIZE. A library that is not the launcher's would start as a
     * singleton (a world of one). QLORA_MPI_LIBRARY names another library to load first. */
    static const struct { const char *name; int flavor; } openmpi_first[] = {
        {"libmpi.so.40", OPENMPI}, {"libmpich.so.12", MPICH}, {"libmpi.so.12", MPICH}, {"libmpi.so", OPENMPI},
    }, mpich_first[] = {
        {"libmpich.so.12", MPICH}, {"libmpi.so.12", MPICH}, {"libmpi.so.40", OPENMPI}, {"libmpi.so", OPENMPI},
    };
    const int hydra = !getenv("OMPI_COMM_WORLD_SIZE") && getenv("PMI_SIZE");
    const char *chosen = getenv("QLORA_MPI_LIBRARY");
    struct { const char *name; int flavor; } candidates[5];
    size_t count = 0;
    if (chosen && *chosen) {
        candidates[count].name = chosen;
        candidates[count++].flavor = OPENMPI;   /* told apart below by ompi_mpi_comm_world */
    }
    for (size_t i = 0; i < 4; i++) {
        candidates[count].name = hydra ? mpich_first[i].name : openmpi_first[i].name;
        candidates[count++].flavor = hydra ? mpich_first[i].flavor : openmpi_first[i].flavor;
    }
    void *h = NULL;
    char last[256] = "";
    for (size_t i = 0; i < count && !h; i++) {
        /* RTLD_GLOBAL: Open MPI's own plugins resolve symbols of libmpi. */
        h = dlopen(candidates[i].name, RTLD_NOW | RTLD_GLOBAL);
        if (h) {
            flavor = candidates[i].flavor;
            snprintf(library, sizeof library, "%s", candidates[i].name);
        } else {
            snprintf(last, sizeof last, "%s", dlerror());
        }
    }
    if (!h) {
        snprintf(err, errlen, "cannot load an MPI library (libmpi.so.40 of Open MPI, libmpich.so.12 of MPICH): %s\n"
                              "---> HINT: apt-get install openmpi-bin (or mpich), the same on every machine", last);
        return -1;
    }
    /* libmpi.so (or QLORA_MPI_LIBRARY) could be either: Open MPI is the one with ompi_mpi_comm_world. */
    flavor = dlsym(h, "ompi_mpi_comm_world") ? OPENMPI : MPICH;
    int missing = 0, provided = 0, rc;
    if (flavor == OPENMPI) {
        o_comm_world = sym(h, "ompi_mpi_comm_world", &missing);
        o_float = sym(h, "ompi_mpi_float", &missing);
        o_double = sym(h, "ompi_mpi_double", &missing);
        o_byte = sym(h, "ompi_mpi_byte", &missing);
        o_op_sum = sym(h, "ompi_mpi_op_sum", &missing);
        o_init_thread = (int (*)(int *, char ***, int, int *))sym(h, "MPI_Init_thread", &missing);
        o_comm_rank = (int (*)(void *, int *))sym(h, "MPI_Comm_rank", &missing);
        o_comm_size = (int (*)(void *, int *))sym(h, "MPI_Comm_size", &missing);
        o_allreduce = (int (*)(const void *, void *, int, void *, void *, void *))sym(h, "MPI_Allreduce", &missing);
        o_bcast = (int (*)(void *, int, void *, int, void *))sym(h, "MPI_Bcast", &missing);
        o_allgather = (int (*)(const void *, int, void *, void *, int, void *, void *))sym(h, "MPI_Allgather", &missing);
        o_iallreduce = (int (*)(const void *, void *, int, void *, void *, void *, void **))sym(h, "MPI_Iallreduce", &missing);
        o_test = (int (*)(void **, int *, void *))sym(h, "MPI_Test", &missing);
        o_wait = (int (*)(void **, void *))sym(h, "MPI_Wait", &missing);
        o_barrier = (int (*)(void *))sym(h, "MPI_Barrier", &missing);
        o_abort = (int (*)(void *, int))sym(h, "MPI_Abort", &missing);
        o_finalize = (int (*)(void))sym(h, "MPI_Finalize", &missing);
    } else {
        m_init_thread = (int (*)(int *, char ***, int, int *))sym(h, "MPI_Init_thread", &missing);
        m_comm_rank = (int (*)(int, int *))sym(h, "MPI_Comm_rank", &missing);
        m_comm_size = (int (*)(int, int *))sym(h, "MPI_Comm_size", &missing);
        m_allreduce = (int (*)(const void *, void *, int, int, int, int))sym(h, "MPI_Allreduce", &missing);
        m_bcast = (int (*)(void *, int, int, int, int))sym(h, "MPI_Bcast", &missing);
        m_allgather = (int (*)(const void *, int, int, void *, int, int, int))sym(h, "MPI_Allgather", &missing);
        m_iallreduce = (int (*)(const void *, void *, int, int, int, int, int *))sym(h, "MPI_Iallreduce", &missing);
        m_test = (int (*)(int *, int *, void *))sym(h, "MPI_Test", &missing);
        m_wait = (int (*)(int *, void *))sym(h, "MPI_Wait", &missing);
        m_barrier = (int (*)(int))sym(h, "MPI_Barrier", &missing);
        m_abort = (int (*)(int, int))sym(h, "MPI_Abort", &missing);
        m_finalize = (int (*)(void))sym(h, "MPI_Finalize", &missing);
    }
    if (missing) {
        snprintf(err, errlen, "%s lacks MPI functions or handles this shim needs", library);
        flavor = NONE;
        return -1;
    }
    rc = flavor == OPENMPI ? o_init_thread(NULL, NULL, THREAD_FUNNELED, &provided) : m_init_thread(NULL, NULL, THREAD_FUNNELED, &provided);
    if (rc != 0) {
        snprintf(err, errlen, "MPI_Init_thread failed (%d) in %s", rc, library);
        return rc;
    }
    if (flavor == OPENMPI) {
        o_comm_rank(o_comm_world, &rank_);
        o_comm_size(o_comm_world, &size_);
    } else {
        m_comm_rank(M_COMM_WORLD, &rank_);
        m_comm_size(M_COMM_WORLD, &size_);
    }
    initialized = 1;
    return 0;
}

const char *qk_mpi_flavor(void) { return flavor == OPENMPI ? "Open MPI" : flavor == MPICH ? "MPICH" : ""; }
const char *qk_mpi_library(void) { return initialized ? library : ""; }
int qk_mpi_rank(void) { return rank_; }
int qk_mpi_size(void) { return size_; }

/* Counts past INT_MAX go in pieces: MPI's count is an int. */
static int allreduce(void *buf, int64_t count, size_t elem, void *o_type, int m_type) {
    if (!initialized) return -1;
    for (int64_t done = 0; done < count;) {
        const int n = (int)(count - done < INT_MAX ? count - done : INT_MAX);
        char *p = (char *)buf + done * (int64_t)elem;
        const int rc = flavor == OPENMPI ? o_allreduce(O_IN_PLACE, p, n, o_type, o_op_sum, o_comm_world)
                                         : m_allreduce(M_IN_PLACE, p, n, m_type, M_SUM, M_COMM_WORLD);
        if (rc != 0) return rc;
        done += n;
    }
    return 0;
}

int qk_mpi_allreduce_sum_f32(float *buf, int64_t count) { return allreduce(buf, count, sizeof(float), o_float, M_FLOAT); }
int qk_mpi_allreduce_sum_f64(double *buf, int64_t count) { return allreduce(buf, count, sizeof(double), o_double, M_DOUBLE); }

int qk_mpi_broadcast(void *buf, int64_t bytes, int root) {
    if (!initialized) return -1;
    for (int64_t done = 0; done < bytes;) {
        const int n = (int)(bytes - done < INT_MAX ? bytes - done : INT_MAX);
        const int rc = flavor == OPENMPI ? o_bcast((char *)buf + done, n, o_byte, root, o_comm_world)
                                         : m_bcast((char *)buf + done, n, M_BYTE, root, M_COMM_WORLD);
        if (rc != 0) return rc;
        done += n;
    }
    return 0;
}

/* MPI_Request: a pointer in Open MPI, an int in MPICH; kept in an int64_t either way.
 * MPI_STATUS_IGNORE: ((MPI_Status *)0) in Open MPI, ((MPI_Status *)1) in MPICH. */
#define O_STATUS_IGNORE ((void *)0)
#define M_STATUS_IGNORE ((void *)1)

int qk_mpi_iallreduce_sum_f32(float *buf, int64_t count, int64_t *request) {
    if (!initialized) return -1;
    if (count > INT_MAX) return -2;
    if (flavor == OPENMPI) {
        void *r = NULL;
        const int rc = o_iallreduce(O_IN_PLACE, buf, (int)count, o_float, o_op_sum, o_comm_world, &r);
        *request = (int64_t)(intptr_t)r;
        return rc;
    }
    int r = 0;
    const int rc = m_iallreduce(M_IN_PLACE, buf, (int)count, M_FLOAT, M_SUM, M_COMM_WORLD, &r);
    *request = r;
    return rc;
}

int qk_mpi_test(int64_t *request, int *done) {
    if (!initialized) return -1;
    if (flavor == OPENMPI) {
        void *r = (void *)(intptr_t)*request;
        const int rc = o_test(&r, done, O_STATUS_IGNORE);
        *request = (int64_t)(intptr_t)r;
        return rc;
    }
    int r = (int)*request;
    const int rc = m_test(&r, done, M_STATUS_IGNORE);
    *request = r;
    return rc;
}

int qk_mpi_wait(int64_t *request) {
    if (!initialized) return -1;
    if (flavor == OPENMPI) {
        void *r = (void *)(intptr_t)*request;
        const int rc = o_wait(&r, O_STATUS_IGNORE);
        *request = (int64_t)(intptr_t)r;
        return rc;
    }
    int r = (int)*request;
    const int rc = m_wait(&r, M_STATUS_IGNORE);
    *request = r;
    return rc;
}

int qk_mpi_allgather_bytes(const void *send, int64_t bytes, void *recv) {
    if (!initialized) return -1;
    if (bytes > INT_MAX) return -2;
    return flavor == OPENMPI ? o_allgather(send, (int)bytes, o_byte, recv, (int)bytes, o_byte, o_comm_world)
                             : m_allgather(send, (int)bytes, M_BYTE, recv, (int)bytes, M_BYTE, M_COMM_WORLD);
}

int qk_mpi_barrier(void) {
    if (!initialized) return -1;
    return flavor == OPENMPI ? o_barrier(o_comm_world) : m_barrier(M_COMM_WORLD);
}

void qk_mpi_abort(int code) {
    if (!initialized) return;
    if (flavor == OPENMPI) o_abort(o_comm_world, code);
    else m_abort(M_COMM_WORLD, code);
}

int qk_mpi_finalize(void) {
    if (!initialized) return 0;
    initialized = 0;
    return flavor == OPENMPI ? o_finalize() : m_finalize();
}
