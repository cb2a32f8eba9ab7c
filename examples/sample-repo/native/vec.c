#include "vec.h"

Vec vec_add(Vec a, Vec b) {
    Vec r = {a.x + b.x, a.y + b.y};
    return r;
}

double vec_dot(Vec a, Vec b) {
    return a.x * b.x + a.y * b.y;
}
