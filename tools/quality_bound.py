#!/usr/bin/env python3
"""quality_bound.py - an offline reference for MovieLens 100K attribute quality.

How far can the attributes of u.user (age band, gender, occupation) and
u.item (genres, release decade) take test AUC on a split, when a model is
trained to convergence (full batch, L-BFGS, several L2 strengths) instead of
in one streaming pass? It trains on TRAIN, scores TEST frozen, and prints
test AUC over all rows and over the rows of users absent from TRAIN, for
logistic regression on growing feature sets and for a factorization machine
(user side = id + attributes, item side = id + attributes, pairs across the
sides only: the shape hogrec's model has).

The L2 strength is picked on the test set itself, so the figures are an
optimistic bound, not a result a model could claim.

Needs python3-numpy and python3-scipy (exploration only; hogrec does not).

usage: tools/quality_bound.py ML_DIR TRAIN TEST [--binarize 4] [--fm-k 8]
ML_DIR holds u.user and u.item; TRAIN and TEST are u.data-format files.
"""
import argparse
import sys

import numpy as np
import scipy.optimize
import scipy.sparse as sp

GENRES = 19


def age_band(age):
    for lim, name in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"),
                      (56, "50-55")):
        if age < lim:
            return name
    return "56+"


def read_users(path):
    users = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            p = line.rstrip("\n").split("|")
            users[p[0]] = ["age=" + age_band(int(p[1])), "gender=" + p[2], "occ=" + p[3]]
    return users


def read_items(path):
    items = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            p = line.rstrip("\n").split("|")
            date = p[2]
            decade = "decade=" + (date[-4:-1] + "0s" if len(date) >= 4 else "unknown")
            items[p[0]] = ["genre=%d" % g for g in range(GENRES) if p[5 + g] == "1"] + [decade]
    return items


def read_events(path, binarize):
    rows = []
    with open(path) as f:
        for line in f:
            u, i, r, _ = line.split()
            rows.append((u, i, 1.0 if float(r) >= binarize else 0.0))
    return rows


def auc(score, label):
    order = np.argsort(score, kind="mergesort")
    s, y = score[order], label[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2.0 + 1
        i = j + 1
    npos = y.sum()
    nneg = len(y) - npos
    return (ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg)


class Encoder:
    """Feature name -> column, built on the training rows only (a name first
    seen in the test set has no column: it was never learned)."""

    def __init__(self):
        self.col = {}

    def matrix(self, feats, vals, grow):
        r, c, v = [], [], []
        for n, (fs, vs) in enumerate(zip(feats, vals)):
            for f, x in zip(fs, vs):
                j = self.col.get(f)
                if j is None and grow:
                    j = self.col[f] = len(self.col)
                if j is not None:
                    r.append(n)
                    c.append(j)
                    v.append(x)
        return sp.csr_matrix((v, (r, c)), shape=(len(feats), max(len(self.col), 1)))


def feature_rows(events, users, items, spec, attr_value):
    """Per event: (user-side features, item-side features, cross features),
    each a list of (name, value)."""
    out = []
    for u, i, _ in events:
        ua = users.get(u, []) if "uattr" in spec else []
        ia = items.get(i, []) if "iattr" in spec else []
        us = [("u=" + u, 1.0)] if "uid" in spec else []
        us += [("u:" + a, attr_value) for a in ua]
        its = [("i=" + i, 1.0)] + [("i:" + a, attr_value) for a in ia]
        cross = []
        if "x_uattr_item" in spec:
            cross += [("%s*i=%s" % (a, i), attr_value) for a in users.get(u, [])]
        if "x_uattr_iattr" in spec:
            cross += [("%s*%s" % (a, b), attr_value) for a in users.get(u, []) for b in items.get(i, [])]
        if "x_iattr_user" in spec:
            cross += [("%s*u=%s" % (b, u), attr_value) for b in items.get(i, [])]
        out.append((us, its, cross))
    return out


def fit_lr(X, y, l2):
    n, d = X.shape

    def f(w):
        z = X @ w[:d] + w[d]
        p = 1 / (1 + np.exp(-z))
        loss = np.sum(np.logaddexp(0, z) - y * z) / n + 0.5 * l2 * np.dot(w[:d], w[:d])
        g = p - y
        grad = np.concatenate([X.T @ g / n + l2 * w[:d], [g.sum() / n]])
        return loss, grad

    res = scipy.optimize.minimize(f, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                                  options={"maxiter": 2000})
    return lambda Z: Z @ res.x[:d] + res.x[d]


def fit_fm(XU, XI, XC, y, l2, l2v, k, seed=1):
    """FM with a user side (XU), an item side (XI) and linear-only crosses
    (XC): y = b + XU wu + XI wi + XC wc + <XU Vu, XI Vi>."""
    n = XU.shape[0]
    du, di, dc = XU.shape[1], XI.shape[1], XC.shape[1]
    rng = np.random.default_rng(seed)
    sizes = [du, di, dc, 1, du * k, di * k]

    def unpack(w):
        parts, o = [], 0
        for s in sizes:
            parts.append(w[o:o + s])
            o += s
        wu, wi, wc, b, vu, vi = parts
        return wu, wi, wc, b[0], vu.reshape(du, k), vi.reshape(di, k)

    def score(w, A, B, C):
        wu, wi, wc, b, Vu, Vi = unpack(w)
        P, Q = A @ Vu, B @ Vi
        return A @ wu + B @ wi + C @ wc + b + np.sum(P * Q, axis=1), P, Q

    def f(w):
        z, P, Q = score(w, XU, XI, XC)
        wu, wi, wc, b, Vu, Vi = unpack(w)
        p = 1 / (1 + np.exp(-z))
        g = (p - y) / n
        loss = np.sum(np.logaddexp(0, z) - y * z) / n
        loss += 0.5 * l2 * (wu @ wu + wi @ wi + wc @ wc) + 0.5 * l2v * (np.sum(Vu * Vu) + np.sum(Vi * Vi))
        grad = np.concatenate([XU.T @ g + l2 * wu, XI.T @ g + l2 * wi, XC.T @ g + l2 * wc,
                               [g.sum()], (XU.T @ (g[:, None] * Q) + l2v * Vu).ravel(),
                               (XI.T @ (g[:, None] * P) + l2v * Vi).ravel()])
        return loss, grad

    w0 = np.concatenate([np.zeros(du + di + dc + 1), rng.normal(0, 0.01, (du + di) * k)])
    res = scipy.optimize.minimize(f, w0, jac=True, method="L-BFGS-B", options={"maxiter": 3000})
    return lambda A, B, C: score(res.x, A, B, C)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ml_dir")
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("--binarize", type=float, default=4)
    ap.add_argument("--fm-k", type=int, default=8)
    ap.add_argument("--attr-value", type=float, default=1.0)
    a = ap.parse_args()
    users = read_users(a.ml_dir + "/u.user")
    items = read_items(a.ml_dir + "/u.item")
    tr = read_events(a.train, a.binarize)
    te = read_events(a.test, a.binarize)
    ytr = np.array([r[2] for r in tr])
    yte = np.array([r[2] for r in te])
    seen = {r[0] for r in tr}
    cold = np.array([r[0] not in seen for r in te])
    print("train %d, test %d, cold-user test rows %d, positive rate %.3f / %.3f" %
          (len(tr), len(te), cold.sum(), ytr.mean(), yte.mean()))

    def report(name, s, extra=""):
        print("%-44s AUC %.4f  cold %.4f %s" % (name, auc(s, yte), auc(s[cold], yte[cold]), extra))
        sys.stdout.flush()

    # smoothed per-item positive rate (the baseline)
    prior = ytr.mean()
    cnt, pos = {}, {}
    for u, i, y in tr:
        cnt[i] = cnt.get(i, 0) + 1
        pos[i] = pos.get(i, 0) + y
    report("item positive rate (smoothed, m=10)",
           np.array([(pos.get(i, 0) + 10 * prior) / (cnt.get(i, 0) + 10) for _, i, _ in te]))

    # not a model: the test users' own positive rate in the test rows (it
    # reads the labels it scores) added to the item's, in logits: how much
    # of the test AUC is the user's rating habit, which the attributes
    # would have to tell for a new user
    logit = lambda p: np.log(p / (1 - p))
    urate = {}
    for u in {r[0] for r in te}:
        m = np.array([r[0] == u for r in te])
        urate[u] = (yte[m].sum() + 10 * prior) / (m.sum() + 10)
    report("oracle: item rate + test user's own rate",
           np.array([logit((pos.get(i, 0) + 10 * prior) / (cnt.get(i, 0) + 10)) +
                     logit(urate[u]) for u, i, _ in te]))

    specs = [
        ("LR item id only", set()),
        ("LR item id + item attrs", {"iattr"}),
        ("LR item id + user attrs + item attrs", {"uattr", "iattr"}),
        ("LR item + user ids", {"uid"}),
        ("LR + user attrs + item attrs", {"uid", "uattr", "iattr"}),
        ("LR + user attr x item id", {"uid", "uattr", "iattr", "x_uattr_item"}),
        ("LR + user attr x item attr", {"uid", "uattr", "iattr", "x_uattr_item", "x_uattr_iattr"}),
        ("LR + item attr x user id", {"uid", "uattr", "iattr", "x_uattr_item", "x_uattr_iattr",
                                      "x_iattr_user"}),
    ]
    for name, spec in specs:
        ftr = feature_rows(tr, users, items, spec, a.attr_value)
        fte = feature_rows(te, users, items, spec, a.attr_value)
        enc = Encoder()
        flat = lambda rows: ([[f for f, _ in us + its + cr] for us, its, cr in rows],
                             [[x for _, x in us + its + cr] for us, its, cr in rows])
        Xtr = enc.matrix(*flat(ftr), grow=True)
        Xte = enc.matrix(*flat(fte), grow=False)
        Xte = sp.csr_matrix((Xte.data, Xte.indices, Xte.indptr), shape=(Xte.shape[0], Xtr.shape[1]))
        best = None
        for l2 in (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6):
            s = fit_lr(Xtr, ytr, l2)(Xte)
            v = auc(s, yte)
            if best is None or v > best[0]:
                best = (v, l2, s)
        report(name, best[2], "(l2 %g, %d features)" % (best[1], Xtr.shape[1]))

    for name, spec, ids_only in (("FM ids only (k=%d)" % a.fm_k, {"uid"}, True),
                                 ("FM sides with attrs (k=%d)" % a.fm_k,
                                  {"uid", "uattr", "iattr"}, False),
                                 ("FM sides + user attr x item id linear",
                                  {"uid", "uattr", "iattr", "x_uattr_item"}, False)):
        ftr = feature_rows(tr, users, items, spec, a.attr_value)
        fte = feature_rows(te, users, items, spec, a.attr_value)
        mats = []
        for part in range(3):
            enc = Encoder()
            m_tr = enc.matrix([[f for f, _ in r[part]] for r in ftr],
                              [[x for _, x in r[part]] for r in ftr], grow=True)
            m_te = enc.matrix([[f for f, _ in r[part]] for r in fte],
                              [[x for _, x in r[part]] for r in fte], grow=False)
            m_te = sp.csr_matrix((m_te.data, m_te.indices, m_te.indptr),
                                 shape=(m_te.shape[0], m_tr.shape[1]))
            mats.append((m_tr, m_te))
        best = None
        for l2 in (1e-3, 1e-4):
            for l2v in (1e-2, 3e-3, 1e-3):
                fm = fit_fm(mats[0][0], mats[1][0], mats[2][0], ytr, l2, l2v, a.fm_k)
                s = fm(mats[0][1], mats[1][1], mats[2][1])
                v = auc(s, yte)
                if best is None or v > best[0]:
                    best = (v, l2, l2v, s)
        report(name, best[3], "(l2 %g, l2 factors %g)" % (best[1], best[2]))


if __name__ == "__main__":
    main()
