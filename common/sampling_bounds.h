/* sampling_bounds.h - the accepted ranges of sampling parameters, in one place for the
 * engine's sampler (worker/sampler.c) and the wire protocol's validation (proto/protocol.c):
 *   temperature [0, SAMPLING_TEMPERATURE_MAX], top_k >= 0, top_p (0, 1], min_p [0, 1],
 *   repetition_penalty (0, SAMPLING_REPETITION_PENALTY_MAX]. */
#ifndef CINDER_SAMPLING_BOUNDS_H
#define CINDER_SAMPLING_BOUNDS_H

#define SAMPLING_TEMPERATURE_MAX        100.0f
#define SAMPLING_REPETITION_PENALTY_MAX 100.0f

#endif
