"""What a privacy budget buys, before anything is spent (no data needed).

``budget plan`` prints, for each ε of ``--epsilon 1,2,4,8``, the noise multiplier σ a shop of
that size will train with, its sample rate and steps, the ε its ledger will record after each
round, and the noise-to-signal ratio of one averaged step (σC/B against C). The statistics
releases (label space and priors) and the run's evaluations are composed exactly as a shop
composes them. With ``--sigma`` it goes the other way: the ε of the DP-SGD rounds at that σ.
"""

from __future__ import annotations

import argparse

NAME = "budget"
HELP = "plan a privacy budget: σ, steps and ε per round for a shop's size, before training"


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    plan = sub.add_parser("plan", help="σ, sample rate, steps and ε after each round, for each budget")
    plan.add_argument("--users", type=int, required=True, help="users in the shop's training data")
    plan.add_argument("--examples", type=int, help="training examples (needed with --unit example)")
    plan.add_argument("--unit", choices=("user", "example"), default="user", help="what ε protects (default user)")
    plan.add_argument("--delta", type=float, help="δ (default 1e-5, as every shop's)")
    plan.add_argument("--accountant", choices=("prv", "rdp"), default="prv")
    plan.add_argument("--rounds", type=int, required=True, help="federated rounds")
    plan.add_argument("--epochs", type=float, default=1.0, help="local epochs per round (default 1)")
    plan.add_argument("--batch-size", type=int, default=32, help="expected batch size (default 32)")
    plan.add_argument("--max-steps", type=int, help="cap on steps per round")
    plan.add_argument("--clip", type=float, default=1.0, help="per-sample clipping norm C (default 1)")
    plan.add_argument("--label-space", choices=("private", "published"), default="private",
                      help="private (default): shops release their engagement for the DP top-K; published: a taxonomy")
    plan.add_argument("--evaluations", type=int, default=1,
                      help="federated evaluations in the run (default 1; train-local: 0)")
    which = plan.add_mutually_exclusive_group()
    which.add_argument("--epsilon", type=_floats, default=[1.0, 2.0, 4.0, 8.0], metavar="LIST",
                       help="budgets to plan for (default 1,2,4,8)")
    which.add_argument("--sigma", type=_floats, metavar="LIST", help="noise multipliers to account instead")


def run(args: argparse.Namespace) -> int:
    from fedinterest.client.budget import Shop, epsilon_for_sigma, plan_budget
    from fedinterest.client.privacy import BudgetExhausted
    from fedinterest.common.config import ConfigError

    if args.unit == "example" and not args.examples:
        raise ConfigError("budget plan: --unit example needs --examples (the shop's training examples)")
    units = args.examples if args.unit == "example" else args.users
    if units < 1 or args.rounds < 1:
        raise ConfigError("budget plan: --users/--examples and --rounds must be >= 1")
    shop = Shop(units=units, unit=args.unit, rounds=args.rounds, epochs=args.epochs, batch_size=args.batch_size,
                max_steps=args.max_steps, clip=args.clip, delta=args.delta, accountant=args.accountant,
                label_space=args.label_space, evaluations=0 if args.sigma else args.evaluations)
    print(f"shop: {units} {args.unit}s, δ={shop.terms().delta:.2e}, {args.accountant.upper()}; {args.rounds} rounds of "
          f"{args.epochs:g} epochs at batch {args.batch_size}, clip {args.clip:g}")
    if args.sigma:
        print("ε of the DP-SGD rounds alone (no statistics, no evaluation)")
    else:
        print(f"before training: {2 if args.label_space == 'private' else 1} statistics release(s); "
              f"{args.evaluations} evaluation(s) reserved")
    header = f"{'ε budget':>9} {'σ':>8} {'q':>8} {'steps':>6} {'noise/signal':>12}  ε after each round  (total)"
    print(header)
    print("-" * len(header))
    for value in args.sigma or args.epsilon:
        try:
            plan = epsilon_for_sigma(value, shop) if args.sigma else plan_budget(value, shop)
        except BudgetExhausted as exc:
            print(f"{value:>9g}  cannot be planned: {exc}")
            continue
        budget = "-" if plan.epsilon is None else f"{plan.epsilon:g}"
        rounds = ", ".join(f"{e:.3f}" for e in plan.epsilon_after_round)
        print(f"{budget:>9} {plan.sigma:>8.3f} {plan.sample_rate:>8.4f} {plan.steps_per_round:>6} "
              f"{plan.noise_to_signal:>12.4f}  {rounds}  ({plan.epsilon_total:.3f})")
    return 0
