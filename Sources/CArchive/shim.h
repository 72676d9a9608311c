#ifndef RADAR_CARCHIVE_SHIM_H
#define RADAR_CARCHIVE_SHIM_H
#include <archive.h>
#include <archive_entry.h>
static inline int radar_archive_ok(void) { return ARCHIVE_OK; }
static inline int radar_archive_eof(void) { return ARCHIVE_EOF; }
static inline int radar_archive_warn(void) { return ARCHIVE_WARN; }
static inline unsigned radar_archive_regular_file(void) { return AE_IFREG; }
#endif
