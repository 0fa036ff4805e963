/* fc_loss.h - part of the fusechat C API; include fusechat.h, not this file. */
#ifndef FC_LOSS_H
#define FC_LOSS_H

#include "fusechat.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif
