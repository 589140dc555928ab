// Fused ROI crop: deproject → ROI test → mask → crop/resize → normalise, one thread per output pixel.
//
// It reproduces edge/crop.py (RoiCropper) bit for bit; the sampling rule is documented there. Every float
// operation uses the explicitly rounded intrinsics (__fmul_rn, __fadd_rn) so nvcc cannot contract a·z + b into
// an FMA: the CPU path computes the same products and sums with numpy's separately rounded float32 ops.
//
// Inputs (device pointers):
//   color     H×W×3 uint8 RGB            depth  H×W uint16 (colour-registered, depth_scale metres per unit)
//   rays      H×W×2 float32 (x/z, y/z) in the colour camera frame, distortion included (edge.core.geometry.ray_table)
//   roi_rays  H×W×3 float32 Rᵀ·ray: ROI-frame coordinates of a point are l = roi_ray·z + b
//   ip        int32 parameters  (see the IP_* indices below)
//   fp        float32 parameters (see the FP_* indices below), then IP_NOTCHES radial notches of NOTCH_FIELDS
//             floats each (edge.crop.RoiTest.notches: sector edges a and b, axial range, r²)
//   silhouette N×N uint8: 1 where the output pixel lies inside the ROI's projected silhouette (edge.crop.roi_silhouette
//             sampled at the nearest pixels); a pixel without depth there is foreground when IP_REACH is 0, else
//             only when enclosed (see `enclosed`). Null: only depth decides.
// Outputs (device pointers, N = output size, batch 1):
//   out_rgb   3×N×N float32 (value·scale + offset per channel)    out_xyz 3×N×N float32 metres
//   out_mask  1×N×N float32 (1 inside, else 0: the engine's `mask` input)  out_color N×N×3 uint8, optional (null: skipped)

enum {
    IP_WIDTH, IP_HEIGHT, IP_X0, IP_Y0, IP_SIDE, IP_SIZE, IP_BOX, IP_FOREGROUND, IP_BILINEAR,
    IP_BG_R, IP_BG_G, IP_BG_B, IP_NOTCHES, IP_REACH, IP_COUNT
};
enum {
    FP_DEPTH_SCALE, FP_B0, FP_B1, FP_B2, FP_LIM0, FP_LIM1, FP_LIM2,
    FP_SCALE0, FP_SCALE1, FP_SCALE2, FP_OFF0, FP_OFF1, FP_OFF2, FP_COUNT
};
enum { NOTCH_AX, NOTCH_AY, NOTCH_BX, NOTCH_BY, NOTCH_Z_FROM, NOTCH_Z_TO, NOTCH_R2, NOTCH_FIELDS };

// ⌊a / b⌋ for b > 0 and any sign of a (C++ division truncates toward zero).
__device__ __forceinline__ long long floor_div(long long a, long long b) {
    long long q = a / b;
    return (q * b > a) ? q - 1 : q;
}

// Channel c of source pixel (u, v), or the background colour outside the image (OpenCV BORDER_CONSTANT).
__device__ __forceinline__ int pixel(const unsigned char* color, int w, int h, long long u, long long v, int c,
                                     int bg) {
    if (u < 0 || v < 0 || u >= w || v >= h) return bg;
    return color[(v * w + u) * 3 + c];
}

// Bilinear colour with 5 fractional bits and 10-bit weights: OpenCV remap INTER_LINEAR on uint8, exactly.
__device__ __forceinline__ int bilinear(const unsigned char* color, int w, int h, long long qx, long long qy, int c,
                                        int bg) {
    long long u = floor_div(qx, 32), v = floor_div(qy, 32);
    int ax = (int)(qx - u * 32), ay = (int)(qy - v * 32);
    int acc = (32 - ax) * (32 - ay) * pixel(color, w, h, u, v, c, bg)
            + ax * (32 - ay) * pixel(color, w, h, u + 1, v, c, bg)
            + (32 - ax) * ay * pixel(color, w, h, u, v + 1, c, bg)
            + ax * ay * pixel(color, w, h, u + 1, v + 1, c, bg);
    return (acc + 512) >> 10;
}

// The ROI inequality on l = a·z + b, in the same operation order as RoiCropper._roi_mask (edge.crop.roi_inequality).
// A cylinder's radial notches cut the points in their sector (both edge cross products ≥ 0), within their axial
// range and beyond their radius; a − b is written a + (−b), which rounds identically (negation is exact).
__device__ __forceinline__ bool inside_roi(const float* a, float z, const float* fp, bool box, int notches) {
    float l0 = __fadd_rn(__fmul_rn(a[0], z), fp[FP_B0]);
    float l1 = __fadd_rn(__fmul_rn(a[1], z), fp[FP_B1]);
    float l2 = __fadd_rn(__fmul_rn(a[2], z), fp[FP_B2]);
    if (box) {
        return fabsf(l0) <= fp[FP_LIM0] && fabsf(l1) <= fp[FP_LIM1] && fabsf(l2) <= fp[FP_LIM2];
    }
    const float rho2 = __fadd_rn(__fmul_rn(l0, l0), __fmul_rn(l1, l1));
    if (!(rho2 <= fp[FP_LIM0] && fabsf(l2) <= fp[FP_LIM1])) return false;
    for (int k = 0; k < notches; ++k) {
        const float* nt = fp + FP_COUNT + k * NOTCH_FIELDS;
        const float from_a = __fadd_rn(__fmul_rn(nt[NOTCH_AX], l1), -__fmul_rn(nt[NOTCH_AY], l0));
        const float to_b = __fadd_rn(__fmul_rn(l0, nt[NOTCH_BY]), -__fmul_rn(l1, nt[NOTCH_BX]));
        if (from_a >= 0.0f && to_b >= 0.0f && l2 >= nt[NOTCH_Z_FROM] && l2 <= nt[NOTCH_Z_TO] && rho2 > nt[NOTCH_R2]) {
            return false;
        }
    }
    return true;
}

// Output sample (i, j)'s nearest source pixel: x0 + ⌊(2j + 1)·side / (2N)⌋ (numerator > 0, so truncation is the
// floor), likewise v; true when it lies inside the image.
__device__ __forceinline__ bool source_uv(const int* ip, int i, int j, long long* u, long long* v) {
    const long long n = ip[IP_SIZE], side = ip[IP_SIDE];
    *u = ip[IP_X0] + ((2LL * j + 1) * side) / (2 * n);
    *v = ip[IP_Y0] + ((2LL * i + 1) * side) / (2 * n);
    return *u >= 0 && *v >= 0 && *u < ip[IP_WIDTH] && *v < ip[IP_HEIGHT];
}

// Output sample (i, j)'s source pixel index, or -1 outside the image.
__device__ __forceinline__ long long source_pixel(const int* ip, int i, int j) {
    long long u, v;
    return source_uv(ip, i, j, &u, &v) ? v * ip[IP_WIDTH] + u : -1;
}

// Output sample (i, j) has depth and lies inside the ROI (the mask before any depthless rule).
__device__ __forceinline__ bool valid_sample(const unsigned short* depth, const float* roi_rays, const int* ip,
                                             const float* fp, int i, int j) {
    const long long p = source_pixel(ip, i, j);
    if (p < 0) return false;
    const float z = __fmul_rn((float)depth[p], fp[FP_DEPTH_SCALE]);
    return z > 0.0f && inside_roi(roi_rays + 3 * p, z, fp, ip[IP_BOX] != 0, ip[IP_NOTCHES]);
}

// A depthless sample is enclosed when a valid sample lies within IP_REACH samples on each of its four sides
// (left, right, up, down; samples beyond the crop are not valid): edge.crop.EnclosedDepthless, the same answer by
// bounded loops that stop at the first valid sample on each side (only depthless silhouette samples get here).
__device__ bool enclosed(const unsigned short* depth, const float* roi_rays, const int* ip, const float* fp, int i,
                         int j) {
    const int n = ip[IP_SIZE], reach = ip[IP_REACH];
    const int di[4] = {0, 0, -1, 1}, dj[4] = {-1, 1, 0, 0};
    for (int s = 0; s < 4; ++s) {
        bool found = false;
        for (int k = 1; k <= reach && !found; ++k) {
            const int a = i + k * di[s], b = j + k * dj[s];
            if (a < 0 || b < 0 || a >= n || b >= n) break;
            found = valid_sample(depth, roi_rays, ip, fp, a, b);
        }
        if (!found) return false;
    }
    return true;
}

extern "C" __global__ void roi_crop(const unsigned char* __restrict__ color, const unsigned short* __restrict__ depth,
                                    const float* __restrict__ rays, const float* __restrict__ roi_rays,
                                    const int* __restrict__ ip, const float* __restrict__ fp,
                                    const unsigned char* __restrict__ silhouette, float* __restrict__ out_rgb, float* __restrict__ out_xyz,
                                    float* __restrict__ out_mask, unsigned char* __restrict__ out_color) {
    const int n = ip[IP_SIZE];
    const int j = blockIdx.x * blockDim.x + threadIdx.x;  // output column
    const int i = blockIdx.y * blockDim.y + threadIdx.y;  // output row
    if (i >= n || j >= n) return;
    const int w = ip[IP_WIDTH], h = ip[IP_HEIGHT], side = ip[IP_SIDE];
    const long long nn = (long long)n * n, o = (long long)i * n + j;

    long long u, v;
    float x = 0.0f, y = 0.0f, z = 0.0f;
    bool m = false;
    if (source_uv(ip, i, j, &u, &v)) {
        const long long p = v * w + u;
        z = __fmul_rn((float)depth[p], fp[FP_DEPTH_SCALE]);
        x = __fmul_rn(rays[2 * p], z);
        y = __fmul_rn(rays[2 * p + 1], z);
        m = z > 0.0f && inside_roi(roi_rays + 3 * p, z, fp, ip[IP_BOX] != 0, ip[IP_NOTCHES]);
    }
    if (!m && z == 0.0f && silhouette != nullptr && silhouette[o] != 0) {
        m = ip[IP_REACH] == 0 || enclosed(depth, roi_rays, ip, fp, i, j);
    }
    const bool background = ip[IP_FOREGROUND] != 0 && !m;
    if (background) x = y = z = 0.0f;
    out_xyz[o] = x;
    out_xyz[nn + o] = y;
    out_xyz[2 * nn + o] = z;
    out_mask[o] = m ? 1.0f : 0.0f;

    // Colour sample in 1/32 px: ⌊(32·(2j + 1)·side + N) / (2N)⌋ + 32·x0 − 16.
    const long long qx = (32LL * (2 * j + 1) * side + n) / (2LL * n) + 32LL * ip[IP_X0] - 16;
    const long long qy = (32LL * (2 * i + 1) * side + n) / (2LL * n) + 32LL * ip[IP_Y0] - 16;
    for (int c = 0; c < 3; ++c) {
        const int bg = ip[IP_BG_R + c];
        int value;
        if (background) {
            value = bg;
        } else if (ip[IP_BILINEAR] != 0) {
            value = bilinear(color, w, h, qx, qy, c, bg);
        } else {
            value = pixel(color, w, h, u, v, c, bg);
        }
        out_rgb[c * nn + o] = __fadd_rn(__fmul_rn((float)value, fp[FP_SCALE0 + c]), fp[FP_OFF0 + c]);
        if (out_color != nullptr) out_color[o * 3 + c] = (unsigned char)value;
    }
}
