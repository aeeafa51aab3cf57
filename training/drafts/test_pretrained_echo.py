# Draft: joins tests/test_pretrained.py (after test_echo_models_improve_dice_on_unseen_sequences) when echo2d is
# shipped from training/echo2d_wide_searchmorph with --refine-steps N (then echo2d records refine_steps).


def test_echo2d_recommends_a_refinement_that_raises_dice_on_unseen_wide_sequences():
    from searchmorph_lite.data import load_dataset

    model = _shipped("echo2d")
    assert model.metadata.get("refine_steps", 0) > 0, "echo2d records no recommended refinement"
    pairs = load_dataset("echo2d-synthetic", "test", seed=321, num_sequences=2, frames=6, variability="wide")
    picked = range(0, len(pairs), 3)
    alone = [_label_dice_through_register(model, pairs[i])[1] for i in picked]
    refined = [_label_dice_through_register(model, pairs[i], refine_steps="auto")[1] for i in picked]
    assert np.mean(refined) > np.mean(alone), (alone, refined)
