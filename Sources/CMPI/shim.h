#ifndef RADAR_CMPI_SHIM_H
#define RADAR_CMPI_SHIM_H
#include <mpi.h>

// OpenMPI's predefined handles are macros over incomplete extern structs, which Swift cannot
// import. These accessors hand them to Swift as plain values (OpaquePointer there).
static inline MPI_Comm radar_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype radar_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype radar_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype radar_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype radar_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Op radar_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op radar_mpi_max(void) { return MPI_MAX; }
static inline void *radar_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Status *radar_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline int radar_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static inline int radar_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int radar_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int radar_mpi_success(void) { return MPI_SUCCESS; }
static inline int radar_mpi_any_source(void) { return MPI_ANY_SOURCE; }
#endif
