#ifndef VEC_H
#define VEC_H

typedef struct Vec {
    double x, y;
} Vec;

Vec vec_add(Vec a, Vec b);
double vec_dot(Vec a, Vec b);

#endif
