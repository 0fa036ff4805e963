/* dlpack_abi.h - the DLPack data-interchange ABI (v1.x, with the legacy v0.x managed tensor),
 * declared here from the published specification (dmlc/dlpack, python_spec.rst) under
 * fusechat's own names; only the layout and the constants must match the standard.
 *
 * A producer's __dlpack__() returns a PyCapsule named "dltensor_versioned" holding a
 * fc_dl_managed_versioned (v1), or "dltensor" holding a fc_dl_managed (legacy). The consumer
 * renames the capsule to "used_dltensor_versioned" / "used_dltensor" to take ownership and
 * calls the deleter exactly once, with the GIL held, when done. */
#ifndef FC_DLPACK_ABI_H
#define FC_DLPACK_ABI_H

#include <stdint.h>

/* device types (DLDeviceType) */
enum {
    FC_DL_CPU          = 1,
    FC_DL_CUDA         = 2,
    FC_DL_CUDA_HOST    = 3,
    FC_DL_CUDA_MANAGED = 13,
};

/* dtype codes (DLDataTypeCode) */
enum {
    FC_DL_INT    = 0,
    FC_DL_UINT   = 1,
    FC_DL_FLOAT  = 2,
    FC_DL_BFLOAT = 4,
    FC_DL_BOOL   = 6,
};

/* flags of the versioned managed tensor */
#define FC_DL_FLAG_READ_ONLY (UINT64_C(1) << 0)
#define FC_DL_FLAG_IS_COPIED (UINT64_C(1) << 1)

typedef struct fc_dl_device {
    int32_t device_type; /* an enum in the standard: int-sized on every supported ABI */
    int32_t device_id;
} fc_dl_device;

typedef struct fc_dl_dtype {
    uint8_t  code;
    uint8_t  bits;
    uint16_t lanes;
} fc_dl_dtype;

typedef struct fc_dl_tensor {
    void        *data;        /* device pointer; add byte_offset before use */
    fc_dl_device device;
    int32_t      ndim;
    fc_dl_dtype  dtype;
    int64_t     *shape;       /* [ndim] */
    int64_t     *strides;     /* [ndim] in elements; NULL = compact row-major */
    uint64_t     byte_offset;
} fc_dl_tensor;

/* legacy (pre-1.0) managed tensor, capsule "dltensor" */
typedef struct fc_dl_managed {
    fc_dl_tensor dl_tensor;
    void        *manager_ctx;
    void (*deleter)(struct fc_dl_managed *self);
} fc_dl_managed;

typedef struct fc_dl_version {
    uint32_t major;
    uint32_t minor;
} fc_dl_version;

/* 1.x managed tensor, capsule "dltensor_versioned"; the version comes first so that a
 * consumer can read it before anything else */
typedef struct fc_dl_managed_versioned {
    fc_dl_version version;
    void         *manager_ctx;
    void (*deleter)(struct fc_dl_managed_versioned *self);
    uint64_t      flags;
    fc_dl_tensor  dl_tensor;
} fc_dl_managed_versioned;

#endif
