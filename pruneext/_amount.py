"""How much to prune: validation and the count k, exactly as torch.nn.utils.prune.

Same checks, same exception types, same messages, same rounding (Python's
round(), half to even), so a script sees no difference.
"""
import numbers


def validate_amount_init(amount):
    """At construction: the type and range of `amount`."""
    if not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount}. Must be int or float.")
    if (isinstance(amount, numbers.Integral) and amount < 0) or (
        not isinstance(amount, numbers.Integral) and (float(amount) > 1.0 or float(amount) < 0.0)
    ):
        raise ValueError(
            f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer"
        )


def nparams_to_prune(amount, tensor_size):
    """k: the amount itself if it is an integer, else round(amount * size)."""
    if isinstance(amount, numbers.Integral):
        return amount
    return round(amount * tensor_size)


def validate_amount(amount, tensor_size):
    """At mask time: an integer amount may not exceed what there is to prune."""
    if isinstance(amount, numbers.Integral) and amount > tensor_size:
        raise ValueError(
            f"amount={amount} should be smaller than the number of parameters to prune={tensor_size}"
        )


def checked_k(amount, tensor_size):
    """k for `amount` of `tensor_size` entries, validated as torch does."""
    k = nparams_to_prune(amount, tensor_size)
    validate_amount(k, tensor_size)
    if k is True:  # an Integral that torch.topk refuses (False prunes nothing)
        raise TypeError("topk(): argument 'k' must be int, not bool")
    return int(k)
