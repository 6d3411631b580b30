/* mpi_shim.h — MPI loaded at run time (dlopen), so that qlora builds and runs without it.
 *
 * Open MPI 4.1 (libmpi.so.40) and MPICH 4 (libmpich.so.12, libmpi.so.12) are both taken. Their
 * handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM) are macros Swift cannot import, and differ in
 * kind: Open MPI's are addresses of global objects (ompi_mpi_comm_world, …), resolved here with
 * dlsym; MPICH's are fixed integer constants of its ABI. Every call below goes to the world
 * communicator and must come from the thread that called qk_mpi_init (MPI_THREAD_FUNNELED).
 * Return values: 0 on success; otherwise the MPI error code, or −1 when MPI is not loaded.
 */
#ifndef QK_MPI_SHIM_H
#define QK_MPI_SHIM_H

#include <stddef.h>
#include <stdint.h>

/* Loads the library (the first of the candidates that opens) and calls MPI_Init_thread.
 * `err` receives why not, when it returns nonzero. Idempotent. */
int qk_mpi_init(char *err, size_t errlen);
/* Which library was loaded ("Open MPI", "MPICH") and its path; "" before qk_mpi_init. */
const char *qk_mpi_flavor(void);
const char *qk_mpi_library(void);
int qk_mpi_rank(void);
int qk_mpi_size(void);
/* In place: buf[i] ← Σ over ranks of buf[i], every rank receiving the sum. */
int qk_mpi_allreduce_sum_f32(float *buf, int64_t count);
int qk_mpi_allreduce_sum_f64(double *buf, int64_t count);
/* Nonblocking in-place sum (count at most INT_MAX, else −2): `request` receives the handle for
 * qk_mpi_test (done ← 1 when finished; it also moves the operation on) and qk_mpi_wait. buf
 * must stay untouched until then. */
int qk_mpi_iallreduce_sum_f32(float *buf, int64_t count, int64_t *request);
int qk_mpi_test(int64_t *request, int *done);
int qk_mpi_wait(int64_t *request);
/* buf (bytes) from `root` to every rank. */
int qk_mpi_broadcast(void *buf, int64_t bytes, int root);
/* Every rank's `bytes` bytes (the same count on every rank, at most INT_MAX), in rank order,
 * into recv (size × bytes) on every rank; −2 when bytes exceeds INT_MAX. */
int qk_mpi_allgather_bytes(const void *send, int64_t bytes, void *recv);
int qk_mpi_barrier(void);
/* Ends every rank of the job with `code` (a rank that failed alone must not leave the others
 * waiting in a collective). */
void qk_mpi_abort(int code);
int qk_mpi_finalize(void);

#endif
